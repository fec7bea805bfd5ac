"""Catch-up: what a live application wrote to the sources after the inventory.

The copy works from an inventory; the application keeps uploading meanwhile. A
catch-up pass lists every source again with the ledger as the baseline (an
object the ledger does not know is new; one whose version or ETag changed is
re-queued, see :meth:`residency.ledger.Ledger.upsert_discovered`), then copies and
verifies every object that is not verified yet, with the same code as the
shards. Passes repeat while the delta (new + changed objects) shrinks, up to the
policy's ``cutover.catch_up_passes``; a pass that finds nothing ends it
(``converged``). The final pass, after the cutover's approval and under the
freeze when the policy asks for one, is a single pass of the same kind.

A live listing is always used here, never an S3 Inventory report: a report is
a day old by design.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from . import inventory, transfer
from .ledger import COPIED, DISCOVERED, Ledger
from .policy import Policy, Source
from .stores.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatchUpPass:
    number: int
    listed: int  # objects in scope found by the listing
    new: int  # not in the ledger before this pass
    changed: int  # another version or ETag than the ledger's: copied again
    to_copy: int  # objects not verified after the listing (the delta and any leftovers)
    copied: int
    verified: int
    failed: int
    seconds: float


@dataclass(frozen=True)
class CatchUpResult:
    """``converged``: the last listing found nothing new or changed. ``remaining``:
    objects still not verified after the last pass (they block completeness)."""

    passes: list[CatchUpPass]
    converged: bool
    stopped_because: str
    remaining: int
    dry_run: bool = False
    final: bool = False

    @property
    def delta(self) -> int:
        return sum(p.new + p.changed for p in self.passes)

    def summary(self) -> dict[str, Any]:
        return dict(asdict(self), delta=self.delta, copied=sum(p.copied for p in self.passes))


def catch_up(
    policy: Policy,
    ledger: Ledger,
    stores_for: Callable[[Source], tuple[Store, Store]],
    *,
    max_passes: int,
    dry_run: bool = False,
    final: bool = False,
    placements: dict[str, dict[str, Any]] | None = None,
) -> CatchUpResult:
    """List the sources again and copy and verify what is new or changed, pass after pass.

    Args:
        stores_for: ``source -> (source store, destination store)``.
        max_passes: at most this many passes (the policy's ``cutover.catch_up_passes``).
        dry_run: one listing, recorded as what would be copied; nothing is copied.
        final: the pass right before the cutover (logged and recorded as such).
    """
    mid = policy.migration_id
    what = "final catch-up" if final else "catch-up"
    passes: list[CatchUpPass] = []
    previous: int | None = None
    stopped = "the final pass is one listing, then the cutover" if final else "pass limit reached"
    converged = False
    by_uri = {s.bucket_uri: s for s in policy.sources}
    for number in range(1, max_passes + 1):
        started = time.monotonic()
        listed = inventory.run_inventory(policy, ledger, lambda s: stores_for(s)[0], placements, max_tasks=10**6)
        new, changed = listed.ledger.get("new", 0), listed.ledger.get("requeued", 0)
        pending: dict[str, list[str]] = {}
        for row in ledger.iter_objects(mid, states=(DISCOVERED, COPIED)):
            pending.setdefault(row["src_bucket_uri"], []).append(row["src_uri"])
        to_copy = sum(len(v) for v in pending.values())
        copied = verified = failed = 0
        if not dry_run:
            for bucket_uri, uris in sorted(pending.items()):
                source = by_uri.get(bucket_uri)
                if source is None:
                    continue  # a bucket the policy no longer names: not ours to copy
                src_store, dst_store = stores_for(source)
                c = transfer.copy_rows(policy, ledger, uris, src_store, dst_store)
                v = transfer.verify_rows(policy, ledger, uris, src_store, dst_store)
                copied += c.copied + c.already_present
                verified += v.verified
                failed += c.failed + v.failed
        this = CatchUpPass(number, listed.objects_in_scope, new, changed, to_copy, copied, verified, failed,
                           round(time.monotonic() - started, 3))
        passes.append(this)
        log.info(
            "%s pass %d: %d object(s) in scope listed, %d new and %d changed since the last listing; %d to copy, "
            "%d %s, %d verified, %d failed", what, number, this.listed, new, changed, to_copy, copied,
            "would be copied" if dry_run else "copied", verified, failed,
        )
        if new + changed == 0:
            converged, stopped = True, "a listing found nothing new or changed"
            break
        if dry_run:
            stopped = "dry run: one listing only"
            break
        if previous is not None and new + changed >= previous:
            stopped = f"the delta did not shrink ({previous} -> {new + changed}): writes arrive as fast as passes run"
            break
        previous = new + changed
    remaining = sum(1 for _ in ledger.iter_objects(mid, states=(DISCOVERED, COPIED)))
    result = CatchUpResult(passes, converged, stopped, remaining, dry_run=dry_run, final=final)
    log.info("%s done after %d pass(es): %s; %d object(s) new or changed in all, %d still not verified",
             what, len(passes), stopped, result.delta, remaining)
    return result
