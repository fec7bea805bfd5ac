"""The application's references to the media: cutover, rollback, residual scan.

The application database holds URLs of media objects in the overseas buckets,
in any style :mod:`residency.uris` knows, in columns of three kinds (one URL per
cell, free text, JSON). The modules:

- :mod:`.appdb`: the configured columns, keyset paging, compare-and-swap, and the
  preflight checks (a key column must be unique and never NULL);
- :mod:`.cells`: the URLs (and unexplained bucket mentions) in one cell of any kind;
- :mod:`.journal`: the write-ahead journal in the ledger;
- :mod:`.cutover`: rewrite URLs of proven objects, in cells of any kind, to their domestic copies;
- :mod:`.rollback`: put the application's own values back;
- :mod:`.discover`: every text and JSON column of the database, for references the
  policy's columns miss;
- :mod:`.residual`: at evidence time, every reference that still points overseas
  (or at an unproven copy), with its reason; :mod:`.model` lists the reasons.
"""

from .appdb import check_columns
from .cutover import cutover
from .discover import DiscoveredColumn, DiscoveryReport, discover
from .model import REASON_WORDS, REASONS, CutoverResult, Finding, ResidualReport, RollbackResult
from .residual import scan_residual
from .rollback import rollback

__all__ = [
    "REASONS", "REASON_WORDS", "CutoverResult", "Finding", "ResidualReport", "RollbackResult",
    "DiscoveredColumn", "DiscoveryReport", "check_columns", "cutover", "discover", "rollback", "scan_residual",
]
