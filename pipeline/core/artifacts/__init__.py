"""Every artifact contract of the pipeline, declared once, with atomic writers and validating readers.

Three kinds of artifact (DESIGN.md §3):

* per-frame tables  -> Parquet, described by a :class:`TableSpec` (a ``pyarrow.schema``);
* dense arrays      -> npz without pickles, described by an :class:`ArraySpec` (key -> dtype, ndim);
* small documents   -> JSON, described by a :class:`JsonSpec` (required keys -> Python types).

Writers go through :func:`atomic_output`, so a crash never leaves a half-written file under the
final name (Snakemake would otherwise take it for finished). Readers check the contract and raise
:class:`ArtifactError` naming the file and the offending field. Every artifact carries provenance:
pipeline version, the source video's sha256 and a hash of the stage config that produced it.

Stage modules add their specs to this package (one section per stage, in preprocess.py or models.py;
the mechanism is store.py) rather than declaring schemas locally, so a reader cannot drift from the writer.
A spec is named by its file's path in a subject folder, taken from :mod:`pipeline.core.layout` (which says
where every file lies; this package says what each holds).
"""

from pipeline.core.artifacts.store import *  # noqa: F401,F403  (the mechanism)
from pipeline.core.artifacts.store import _require_file  # noqa: F401
from pipeline.core.artifacts.preprocess import *  # noqa: F401,F403  (preprocessing contracts)
from pipeline.core.artifacts.models import *  # noqa: F401,F403  (model and output contracts)
