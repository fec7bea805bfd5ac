"""The phases as the DAG calls them: one function per task, no Airflow inside.

Each function loads the policy (refusing if the file changed since the run was
planned), logs what it will do, calls one engine function, records the result
in the ledger and the audit chain, logs its counts, and returns a small JSON
summary: counts and shard paths, never lists of keys.

Credentials come through a ``credentials(conn_id)`` callable: the DAG passes
:func:`residency.connections.aws_credentials`; tests pass a dict lookup.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from . import (
    __version__, attest, catchup, evidence, foreign_access, freeze, inventory, references, revocation, s3inventory,
    transfer,
)
from .clients import AwsCredentials, DatabaseCredentials, GcsCredentials
from .evidence.report import human_bytes
from .errors import JurisdictionError, PolicyError, ResidencyError, StoreError
from .jurisdictions import Placement, placement_of
from .ledger import Ledger
from .policy import Destination, Policy, Source, load_policy, redact_db_url
from .stores.base import Store
from .stores.gcs import GcsStore
from .stores.s3 import S3Store, S3TransferConfig
from .uris import ObjectRef

log = logging.getLogger(__name__)

Credentials = Callable[[str], "AwsCredentials | GcsCredentials | DatabaseCredentials"]


def validate_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Check the DAG params; PolicyError names the param and the value."""
    path = params.get("policy_path")
    if not isinstance(path, str) or not path.strip():
        raise PolicyError("params.policy_path", path, "a path to the policy YAML file is required")
    dry_run = params.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise PolicyError("params.dry_run", dry_run, "expected true or false")
    evidence_dir = params.get("evidence_dir") or ""
    if not isinstance(evidence_dir, str):
        raise PolicyError("params.evidence_dir", evidence_dir, "expected a folder path or empty")
    return {"policy_path": path.strip(), "dry_run": dry_run, "evidence_dir": evidence_dir}


class Runtime:
    """What a task needs: the policy, the ledger, and stores built from credentials."""

    def __init__(self, plan: Mapping[str, Any], credentials: Credentials) -> None:
        self.plan = dict(plan)
        self.policy = load_policy(plan["policy_path"])
        if plan.get("policy_sha256") and plan["policy_sha256"] != self.policy.sha256:
            raise PolicyError(
                "policy_path", plan["policy_path"],
                f"the file changed since this run was planned (sha256 {plan['policy_sha256'][:16]} -> "
                f"{self.policy.sha256[:16]}); start a new run",
            )
        self.dry_run = bool(plan.get("dry_run"))
        self.credentials = credentials
        run = self.plan.get("run") or {}
        self.ledger = Ledger(ledger_url(self.policy, credentials, distributed=bool(run.get("distributed"))),
                             run_id=run.get("run_id"))
        self.ledger.create_schema()
        self._stores: dict[str, Store] = {}

    @property
    def run_id(self) -> str | None:
        return (self.plan.get("run") or {}).get("run_id")

    def app_database_url(self) -> str | None:
        """The application database's URL: from the policy's connection, else its ``database_url``."""
        refs = self.policy.references
        if refs is None:
            return None
        if refs.conn_id:
            return _database(self.credentials, refs.conn_id, "references.conn_id").url
        return refs.database_url

    def stores_for(self, source: Source) -> tuple[Store, Store]:
        return self.source_store(source), self.destination_store(self.policy.destination_for(source))

    def store(self, conn_id: str, provider: str) -> Store:
        """The store of one connection; its type must fit the bucket's provider."""
        if conn_id not in self._stores:
            creds = self.credentials(conn_id)
            if provider == "s3":
                if not isinstance(creds, AwsCredentials):
                    raise PolicyError("conn_id", conn_id, "an s3:// bucket needs a connection of type aws")
                self._stores[conn_id] = S3Store(
                    creds.s3_client_factory(),
                    default_region=creds.region_name,
                    transfer=S3TransferConfig(
                        multipart_threshold=self.policy.transfer.multipart_threshold,
                        part_size=self.policy.transfer.part_size,
                    ),
                    service=creds.endpoint_url or "aws",
                    validates_upload_checksums=creds.validates_upload_checksums,
                )
            elif provider == "gs":
                if not isinstance(creds, GcsCredentials):
                    raise PolicyError("conn_id", conn_id, "a gs:// bucket needs a connection of type google_cloud_platform")
                self._stores[conn_id] = GcsStore(creds.client(), service=creds.emulator_host or "google")
            else:
                raise PolicyError("provider", provider, "expected s3 or gs")
        return self._stores[conn_id]

    def source_store(self, source: Source) -> Store:
        return self.store(source.conn_id, source.ref.provider)

    def destination_store(self, destination: Destination) -> Store:
        return self.store(destination.conn_id, destination.ref.provider)

    def source_for_bucket(self, bucket_uri: str) -> Source:
        for source in self.policy.sources:
            if source.bucket_uri == bucket_uri:
                return source
        raise PolicyError("sources", bucket_uri, "no such source in the policy")

    def begin(self, phase: str, extra: str = "") -> None:
        log.info("BEGIN %s: %s%s%s", phase, self.policy.summary(), " dry-run" if self.dry_run else "", extra)

    def end(self, phase: str, result: Mapping[str, Any], run_id: str | None = None) -> dict[str, Any]:
        summary = dict(result)
        run_id = run_id or (self.plan.get("run") or {}).get("run_id")
        self.ledger.record_phase(self.policy.migration_id, phase, summary, run_id=run_id)
        self.ledger.audit(self.policy.migration_id, f"{phase}.done", _compact(summary))
        log.info("END %s: %s", phase, _compact(summary))
        return summary


def _database(credentials: Credentials, conn_id: str, field: str) -> DatabaseCredentials:
    try:
        creds = credentials(conn_id)
    except Exception as exc:  # noqa: BLE001 - an unknown connection id is a configuration mistake
        raise PolicyError(field, conn_id, f"the connection cannot be read: {type(exc).__name__}: {exc}") from exc
    if not isinstance(creds, DatabaseCredentials):
        raise PolicyError(field, conn_id, "expected a database connection (postgres, sqlite, or an extra sqlalchemy_url)")
    return creds


def ledger_url(policy: Policy, credentials: Credentials | None, *, distributed: bool = False) -> str:
    """The ledger's URL: the policy's ``ledger_url`` (or the default), or its ``ledger_conn_id``.

    With ``distributed`` (tasks run on several machines: CeleryExecutor,
    KubernetesExecutor), a SQLite ledger is refused: it is one machine's file, and
    the manifest and every object's state must be where every worker reaches them.
    """
    if policy.ledger_conn_id:
        if credentials is None:
            raise PolicyError("ledger_conn_id", policy.ledger_conn_id, "needs the Airflow connections to be read")
        url = _database(credentials, policy.ledger_conn_id, "ledger_conn_id").url
        field, shown = "ledger_conn_id", policy.ledger_conn_id
    else:
        assert policy.ledger_url is not None
        url = policy.ledger_url
        field, shown = "ledger_url", redact_db_url(url)
    if distributed and url.startswith("sqlite"):
        raise PolicyError(
            field, shown,
            "a SQLite ledger is a file on one machine, but this Airflow runs tasks on several workers "
            "(a distributed executor): name a PostgreSQL ledger (ledger_conn_id or a postgresql:// ledger_url) "
            "that every worker reaches",
        )
    return url


def _compact(result: Mapping[str, Any]) -> dict[str, Any]:
    """The counts of a result for log lines and audit records: lists become their length."""
    return {k: (f"{len(v)} items" if isinstance(v, list) and len(v) > 3 else v) for k, v in result.items()}


# -- phases ------------------------------------------------------------------


def plan_run(
    params: Mapping[str, Any], run: Mapping[str, Any] | None = None, credentials: Credentials | None = None
) -> dict[str, Any]:
    """Validate params and the policy before any work; the plan every task receives."""
    checked = validate_params(params)
    policy = load_policy(checked["policy_path"])
    plan = {
        **checked,
        "policy_path": policy.path,
        "policy_sha256": policy.sha256,
        "migration_id": policy.migration_id,
        "home_jurisdiction": policy.home_jurisdiction,
        "sources": [s.bucket_uri for s in policy.sources],
        "destinations": {p: d.ref.uri for p, d in policy.destinations.items()},
        "run": dict(run or {}),
    }
    url = ledger_url(policy, credentials, distributed=bool((run or {}).get("distributed")))
    ledger = Ledger(url)
    ledger.create_schema()
    ledger.audit(policy.migration_id, "run.planned", {k: v for k, v in plan.items() if k != "run"} | {"run": dict(run or {})})
    log.info("plan: %s; dry_run=%s; ledger %s", policy.summary(), checked["dry_run"], redact_db_url(url))
    return plan


def preflight(rt: Runtime) -> dict[str, Any]:
    """Every bucket reachable, every region mapped, destinations in the home jurisdiction."""
    rt.begin("preflight")
    policy = rt.policy
    placements: dict[str, dict[str, Any]] = {}
    problems: list[str] = []

    def place(store: Store, ref: ObjectRef, declared: str | None) -> Placement:
        if declared:
            return placement_of(ref.provider, declared, source="declared")
        return store.placement(ref.bucket)

    for source in policy.sources:
        store = rt.source_store(source)
        try:
            placement = place(store, source.ref, source.location)
            next(iter(store.list_objects(source.ref.bucket, source.prefix)), None)  # can we list?
        except StoreError as exc:
            problems.append(f"source {source.bucket_uri} is not reachable with {source.conn_id}: {exc.reason}")
            continue
        placements[source.bucket_uri] = asdict(placement)
        where = "domestic" if placement.is_in(policy.home_jurisdiction) else "overseas"
        log.info(
            "preflight source %s: %s (%s), jurisdiction %s [%s, %s]",
            source.bucket_uri, placement.location, placement.description, placement.jurisdiction, where, placement.source,
        )
        if where == "domestic":
            log.warning("preflight source %s is already in %s; it is migrated anyway", source.bucket_uri, policy.home_jurisdiction)

    for provider, destination in policy.destinations.items():
        store = rt.destination_store(destination)
        try:
            placement = place(store, destination.ref, destination.location)
        except StoreError as exc:
            problems.append(f"destination {destination.ref.bucket_uri} is not reachable with {destination.conn_id}: {exc.reason}")
            continue
        placements[destination.ref.bucket_uri] = asdict(placement)
        log.info(
            "preflight destination %s: %s (%s), jurisdiction %s [%s]",
            destination.ref.bucket_uri, placement.location, placement.description, placement.jurisdiction, placement.source,
        )
        if not placement.is_in(policy.home_jurisdiction):
            problems.append(
                f"destination {destination.ref.bucket_uri} is in {placement.location} "
                f"(jurisdiction {placement.jurisdiction or 'several countries'}), not in {policy.home_jurisdiction}: refused"
            )
        rt.ledger.record_bucket(
            policy.migration_id, destination.ref.bucket_uri, role="destination", provider=provider,
            location=placement.location, jurisdiction=placement.jurisdiction, placement_source=placement.source,
        )
    problems.extend(_preflight_references(rt))
    named = tuple(p for p in policy.revocations if p.user and not p.tag)
    if named:  # users selected by tag or account are found at revocation time
        problems.extend(revocation.preflight_check(
            dataclasses.replace(policy, revocations=named), rt.ledger, iam_credentials=rt.credentials,
            probe_credentials=rt.credentials,
        ))
    problems.extend(foreign_access.preflight_gcs(policy, rt.ledger, rt.credentials))
    if problems:
        rt.ledger.audit(policy.migration_id, "preflight.refused", {"problems": problems})
        for problem in problems:
            log.error("preflight: %s", problem)
        raise JurisdictionError("; ".join(problems))
    return rt.end("preflight", {"placements": placements, "buckets": len(placements)})


def _preflight_references(rt: Runtime) -> list[str]:
    """The application database answers, every configured column exists, every key is unique and never NULL."""
    refs = rt.policy.references
    if refs is None:
        return []
    url = rt.app_database_url()
    import sqlalchemy as sa

    from .references import appdb

    app = appdb.app_engine(url)
    try:
        problems = references.check_columns(app, refs)
    except sa.exc.SQLAlchemyError as exc:
        return [f"the application database {redact_db_url(url)} cannot be read: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0]}"]
    finally:
        app.dispose()
    for problem in problems:
        log.error("preflight: %s", problem)
    return problems


def run_inventory(rt: Runtime, placements: Mapping[str, Any] | None) -> dict[str, Any]:
    rt.begin("inventory")
    max_tasks = int((rt.plan.get("run") or {}).get("max_map_length") or 1024)
    result = inventory.run_inventory(rt.policy, rt.ledger, rt.source_store, dict(placements or {}),
                                     max_tasks=max_tasks, entries_for=_report_entries(rt))
    return rt.end("inventory", result.summary())


def _report_entries(rt: Runtime) -> Callable[[Source, Store], tuple[Iterator[Any], str] | None]:
    """Where a source names an S3 Inventory report, its entries instead of a listing."""

    def entries(source: Source, store: Store) -> tuple[Iterator[Any], str] | None:
        if not source.inventory_report:
            return None
        report = s3inventory.read_manifest(store, source.inventory_report)
        return (s3inventory.iter_report(store, source.inventory_report, bucket=source.ref.bucket,
                                        prefix=source.prefix), report.describe())

    return entries


def _shard_stores(rt: Runtime, shard: Mapping[str, Any]) -> tuple[Store, Store]:
    source = rt.source_for_bucket(shard["source"])
    return rt.source_store(source), rt.destination_store(rt.policy.destination_for(source))


def shard_label(shard: Mapping[str, Any]) -> str:
    """A readable name for a mapped task instance (Airflow's map_index_template)."""
    last = shard.get("last", shard["shard"])
    number = f"{shard['shard']:05d}" + (f"-{last:05d}" if last != shard["shard"] else "")
    return f"shard {number} {shard['source']} ({shard['objects']} objects)"


def copy_shard(rt: Runtime, shard: Mapping[str, Any]) -> dict[str, Any]:
    rt.begin("copy", f" {shard_label(shard)}")
    src_store, dst_store = _shard_stores(rt, shard)
    result = transfer.copy_shard(rt.policy, rt.ledger, dict(shard), src_store, dst_store, dry_run=rt.dry_run)
    return rt.end("copy", result.summary())


def verify_shard(rt: Runtime, shard: Mapping[str, Any]) -> dict[str, Any]:
    rt.begin("verify", f" {shard_label(shard)}")
    if rt.dry_run:
        return rt.end("verify", {"shard": shard["shard"], "dry_run": True, "verified": 0})
    src_store, dst_store = _shard_stores(rt, shard)
    result = transfer.verify_shard(rt.policy, rt.ledger, dict(shard), src_store, dst_store)
    return rt.end("verify", result.summary())


def _dst_region(rt: Runtime) -> Callable[[ObjectRef], str | None]:
    by_bucket = {d.ref.bucket_uri: d for d in rt.policy.destinations.values()}
    cache: dict[str, str | None] = {}

    def region(ref: ObjectRef) -> str | None:
        if ref.bucket_uri not in cache:
            dest = by_bucket.get(ref.bucket_uri)
            cache[ref.bucket_uri] = (
                dest.location or rt.destination_store(dest).placement(ref.bucket).location if dest else None
            )
        return cache[ref.bucket_uri]

    return region


def recheck(rt: Runtime) -> dict[str, Any]:
    """Before the cutover: re-prove every verified object (and repair what changed),
    so that references are repointed only to copies proven now."""
    rt.begin("recheck")
    result = attest.attest(rt.policy, rt.ledger, rt.stores_for, phase="recheck", dry_run=rt.dry_run)
    return rt.end("recheck", result.summary())


def catch_up(rt: Runtime) -> dict[str, Any]:
    """After the copy, before the recheck: list the sources again and copy and verify what
    the application wrote since the inventory, pass after pass while the delta shrinks."""
    passes = rt.policy.cutover.catch_up_passes
    rt.begin("catch-up", f" (at most {passes} pass(es))")
    if passes == 0:
        return rt.end("catch_up", {"skipped": "cutover.catch_up_passes is 0: objects written after the inventory "
                                              "are found by the final pass only"})
    result = catchup.catch_up(rt.policy, rt.ledger, rt.stores_for, max_passes=passes, dry_run=rt.dry_run)
    return rt.end("catch_up", result.summary())


def freeze_sources(rt: Runtime) -> dict[str, Any]:
    """After the cutover's approval: the source buckets refuse writes (policy ``cutover.freeze``)."""
    require_approval(rt, "cutover")
    rt.begin("freeze")
    result = freeze.freeze(rt.policy, rt.ledger, rt.source_store, dry_run=rt.dry_run, run_id=rt.run_id)
    log.info("END freeze: %s", result.summary())
    return result.as_dict()


def final_pass(rt: Runtime) -> dict[str, Any]:
    """Right before the cutover (under the freeze, when there is one): one more listing;
    what arrived since is copied, verified, and everything re-proven again, so that the
    cutover repoints only to copies proven now."""
    require_approval(rt, "cutover")
    rt.begin("final catch-up")
    result = catchup.catch_up(rt.policy, rt.ledger, rt.stores_for, max_passes=1, dry_run=rt.dry_run, final=True)
    summary = result.summary()
    if any(p.to_copy for p in result.passes) and not rt.dry_run:  # new copies must be re-proven too
        proof = attest.attest(rt.policy, rt.ledger, rt.stores_for, phase="recheck")
        rt.end("recheck", proof.summary())
        summary["rechecked"] = True
    return rt.end("final_pass", summary)


def unfreeze_sources(rt: Runtime) -> dict[str, Any]:
    """After the cutover, whatever its outcome: the freeze statements are removed."""
    rt.begin("unfreeze")
    result = freeze.unfreeze(rt.policy, rt.ledger, rt.source_store, dry_run=rt.dry_run, run_id=rt.run_id)
    log.info("END unfreeze: %s", result.summary())
    return result.as_dict()


def attest_phase(rt: Runtime) -> dict[str, Any]:
    """Just before the evidence: re-prove everything the evidence will count as migrated."""
    rt.begin("attest")
    result = attest.attest(rt.policy, rt.ledger, rt.stores_for, phase="attest", dry_run=rt.dry_run)
    return rt.end("attest", result.summary())


def _recheck_stamp(rt: Runtime) -> str:
    row = rt.ledger.latest_phase(rt.policy.migration_id, "recheck")
    if row is None or (rt.run_id and row["run_id"] != rt.run_id):
        raise ResidencyError("the cutover needs this run's recheck phase first: no re-proven object may be assumed")
    return row["result"]["stamp"]


# -- approvals of the irreversible steps ---------------------------------------


class ApprovalMissing(ResidencyError):
    """An irreversible step was asked to act without a recorded approval of this run."""

    permanent = True


APPROVED, REJECTED, TIMED_OUT = "approved", "rejected", "timed_out"


def propose_cutover(rt: Runtime) -> dict[str, Any]:
    """What approving the cutover will do, for the approver to read (Markdown), computed
    without changing anything: objects re-proven per route, failures, and the
    references a dry run of the cutover would rewrite."""
    rt.begin("propose cutover")
    policy, mid = rt.policy, rt.policy.migration_id
    routes: dict[str, list[int]] = {}
    failed = pending = 0
    for row in rt.ledger.object_counts(mid):
        n, size = int(row["objects"]), int(row["bytes"] or 0)
        if row["state"] in ("verified", "cut_over"):
            totals = routes.setdefault(row["route"], [0, 0])
            totals[0] += n
            totals[1] += size
        elif row["state"] == "failed":
            failed += n
        else:
            pending += n
    lines = [
        f"**Cutover of migration `{mid}`** (policy sha256 `{policy.sha256[:16]}`)",
        "",
        "Approving repoints the application's references to the domestic copies below. Nothing has been "
        "rewritten yet.",
        "",
        "| route | objects verified and re-proven | bytes |",
        "|---|---:|---:|",
        *[f"| {r} | {n:,} | {human_bytes(b)} |" for r, (n, b) in sorted(routes.items())],
        "",
        f"Failed objects: **{failed:,}**; pending: **{pending:,}** (their references stay where they are).",
    ]
    would: dict[str, Any] = {"rewritten": 0, "residual": 0, "residual_by_reason": {}}
    if policy.references is not None:
        result = references.cutover(
            policy, rt.ledger, dst_region=_dst_region(rt), dry_run=True, database_url=rt.app_database_url(),
            attested_since=_recheck_stamp(rt),
        )
        would = {"rewritten": result.rewritten, "residual": result.residual,
                 "residual_by_reason": result.residual_by_reason, "columns": sorted(result.per_column)}
        reasons = ", ".join(f"{k} {v:,}" for k, v in result.residual_by_reason.items()) or "none"
        lines += ["", f"References: **{result.rewritten:,} would be rewritten** in "
                      f"{len(result.per_column)} column(s); {result.residual:,} stay ({reasons})."]
    else:
        lines += ["", "The policy names no application database columns: nothing would be rewritten."]
    lines += ["", "Rejecting stops the run: nothing is rewritten and no credential is revoked; the evidence "
                  "records the rejection."]
    return rt.end("propose_cutover", {"markdown": "\n".join(lines), "routes": routes, "failed": failed,
                                      "pending": pending, "references": would})


def propose_revoke(rt: Runtime) -> dict[str, Any]:
    """What approving the revocation will do: every access path that would change, read-only
    (listings, the policies as they are, and the attempts before)."""
    rt.begin("propose revoke")
    mid = rt.policy.migration_id
    summary = foreign_access.revoke_all(rt.policy, rt.ledger, credentials=rt.credentials, dry_run=True)
    lines = [f"**Closing every foreign access path, migration `{mid}`**", ""] + foreign_access.plan_markdown(summary)
    lines += ["", "Rejecting stops the run before any credential changes; the evidence records the rejection."]
    keys = [{"user": r["principal"].rsplit("/", 1)[-1], "access_key_id": r["credential_id"],
             "already_revoked": r["outcome"] == "already_revoked"} for r in summary["paths"] if r["kind"] == "access_key"]
    return rt.end("propose_revoke", {"markdown": "\n".join(lines), "keys": keys, "paths": summary["paths"]})


def record_approval(rt: Runtime, step: str, response: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keep the human decision on ``step`` (an Airflow human-in-the-loop response:
    ``chosen_options``, ``responded_by_user``, ``responded_at``, ``params_input``)
    in the ledger and the audit chain. No responder (a timeout) is recorded as
    ``timed_out``, which stops the step as a rejection does."""
    response = dict(response or {})
    chosen = list(response.get("chosen_options") or [])
    user = response.get("responded_by_user") or {}
    who = (user.get("name") or user.get("id")) if isinstance(user, Mapping) else (str(user) if user else None)
    if not who:
        decision = TIMED_OUT
    else:
        decision = APPROVED if chosen == ["Approve"] else REJECTED
    comment = (response.get("params_input") or {}).get("comment") or None
    at = response.get("responded_at")
    run_id = rt.run_id or "manual"
    rt.ledger.record_approval(rt.policy.migration_id, run_id, step, decision, who=who,
                              at=str(at) if at else None, comment=comment)
    log.info("approval of %s for run %s: %s by %s at %s%s", step, run_id, decision.upper(), who or "nobody (timed out)",
             at, f" ({comment})" if comment else "")
    return {"step": step, "decision": decision, "who": who, "at": str(at) if at else None, "comment": comment}


def require_approval(rt: Runtime, step: str) -> None:
    """An irreversible step acts only on an approval of this very run (a dry run changes
    nothing and needs none).

    Raises:
        ApprovalMissing: no approval recorded, or the step was rejected or timed out.
    """
    if rt.dry_run:
        return
    decisions = [a for a in rt.ledger.get_approvals(rt.policy.migration_id, rt.run_id or "manual") if a["step"] == step]
    if not decisions or decisions[-1]["decision"] != APPROVED:
        what = decisions[-1]["decision"] if decisions else "no decision recorded"
        raise ApprovalMissing(f"the {step} of run {rt.run_id} needs an approval first ({what}): nothing was changed")


def cutover(rt: Runtime) -> dict[str, Any]:
    require_approval(rt, "cutover")
    if rt.policy.references is None:
        return rt.end("cutover", {"skipped": "the policy names no reference columns"})
    rt.begin("cutover", f" columns {', '.join(c.label for c in rt.policy.references.columns)}")
    result = references.cutover(
        rt.policy, rt.ledger, dst_region=_dst_region(rt), dry_run=rt.dry_run,
        database_url=rt.app_database_url(), attested_since=_recheck_stamp(rt),
    )
    return rt.end("cutover", asdict(result))


def revoke(rt: Runtime) -> dict[str, Any]:
    require_approval(rt, "revoke")
    if not rt.policy.principals:
        return rt.end("revoke", {"skipped": "the policy names no principals"})
    rt.begin("revoke", f" principals {'; '.join(p.label for p in rt.policy.principals)}")
    return rt.end("revoke", foreign_access.revoke_all(rt.policy, rt.ledger, credentials=rt.credentials,
                                                      dry_run=rt.dry_run))


def software_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"residency": __version__, "python": platform.python_version()}
    for dist in ("apache-airflow", "boto3", "botocore", "google-cloud-storage", "tenacity", "sqlalchemy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _discover(rt: Runtime) -> dict[str, Any] | None:
    """Every text and JSON column the policy does not name, scanned now (see
    :func:`residency.references.discover`); an error is reported, never hidden."""
    if rt.policy.references is None:
        return None
    try:
        return references.discover(rt.policy, database_url=rt.app_database_url()).as_dict()
    except Exception as exc:  # noqa: BLE001 - the report must still be written, saying why
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.error("evidence: the discovery scan of the application database failed: %s", why)
        return {"error": why}


def write_evidence(rt: Runtime, run: Mapping[str, Any]) -> dict[str, Any]:
    """Scan the application's references now, then write the evidence.

    The residual scan is made here, for this report, against the stamp of the
    latest attestation; a scan that cannot be made leaves the references rule
    failed (the evidence says why), never an earlier scan reused.
    """
    rt.begin("evidence")
    out_dir = Path(rt.plan.get("evidence_dir") or Path(rt.policy.control_dir) / rt.policy.migration_id / "evidence")
    if rt.dry_run:
        return _write_plan(rt, run, out_dir)
    residual = None
    if rt.policy.references is not None:
        latest = rt.ledger.latest_phase(rt.policy.migration_id, "attest")
        try:
            residual = references.scan_residual(
                rt.policy, rt.ledger, database_url=rt.app_database_url(),
                attest_stamp=latest["result"].get("stamp") if latest else None,
            )
        except Exception as exc:  # noqa: BLE001 - the report must still be written, saying why
            log.error("evidence: the residual scan of the application database failed: %s: %s",
                      type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    discovery = _discover(rt)
    files = evidence.write_evidence(
        rt.policy, rt.ledger, out_dir, run={**dict(run), "dry_run": rt.dry_run}, software=software_versions(),
        residual=residual, approvals=rt.ledger.get_approvals(rt.policy.migration_id, rt.run_id or "manual"),
        discovery=discovery,
    )
    report = files.evidence
    summary = {
        "kind": "evidence",
        "evidence_json": str(files.evidence_json),
        "evidence_html": str(files.evidence_html),
        "complete": files.complete,
        "problems": report.get("problems", []),
        "reconciliation": report.get("reconciliation", {}),
    }
    rt.ledger.record_phase(rt.policy.migration_id, "evidence", {k: summary[k] for k in (
        "kind", "evidence_json", "evidence_html", "complete", "problems")}, run_id=rt.run_id)
    log.info("END evidence: %s -> %s (complete=%s)", rt.policy.migration_id, files.evidence_json, files.complete)
    return summary


def _write_plan(rt: Runtime, run: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """A dry run's report is a plan (never a verdict): what a real run would do and spend."""
    methods = {}
    for source in rt.policy.sources:
        src, dst = rt.stores_for(source)
        methods[source.bucket_uri] = {
            "method": "server_side" if transfer.same_service(src, dst) else "streamed",
            "read_back": not dst.capabilities.validates_upload_checksums,
        }
    json_path, html_path, plan = evidence.write_plan(rt.policy, rt.ledger, out_dir, run={**dict(run), "dry_run": True},
                                                     methods=methods)
    summary = {"kind": "plan", "evidence_json": str(json_path), "evidence_html": str(html_path), "complete": False,
               "problems": [], "objects_to_copy": plan["objects_to_copy"], "bytes_to_copy": plan["bytes_to_copy"],
               "requests_per_object": plan["requests_estimate"]["per_object"]}
    rt.ledger.record_phase(rt.policy.migration_id, "evidence", summary, run_id=rt.run_id)
    log.info("END evidence: a PLAN (dry run) for %s -> %s: %d objects, %d bytes would be copied",
             rt.policy.migration_id, json_path, plan["objects_to_copy"], plan["bytes_to_copy"])
    return summary
