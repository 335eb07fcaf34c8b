"""The sample sheet: which video is which subject, for videos that do not sit at ``data/<s>/<s>.mp4``.

A tab-separated file (config ``subjects_tsv``) with a header row and the columns ``subject``, ``video`` and
``notes`` (free text, may be empty)::

    subject	video	notes
    jose_n	data/José Ñ/talk clip (1).mov	phone, portrait

Subject names match :data:`SUBJECT_PATTERN` (they become folder and wildcard names); the video path may hold
anything else, spaces and non-ASCII characters included (the rules quote every path). A relative path is
relative to the working directory Snakemake runs in (where ``data/`` and ``results/`` are). Lines starting
with ``#`` and blank lines are skipped. Refused, naming the sheet and the line: a missing column, a bad or
repeated subject name, an empty video path, a video that does not exist.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from pipeline.core.errors import PipelineError

SUBJECT_PATTERN = "[A-Za-z0-9_-]+"
COLUMNS = ("subject", "video", "notes")


class SampleSheetError(PipelineError):
    pass


def read_sample_sheet(sheet: Path | str, workdir: Path | str = ".") -> dict[str, str]:
    """Rows of ``sheet`` as ``{subject: video path}`` (paths as written; checked to exist under ``workdir``)."""
    sheet = Path(sheet)
    if not sheet.is_file():
        raise SampleSheetError(sheet, "sample sheet not found")
    with open(sheet, newline="", encoding="utf-8") as f:
        lines = [(i, line) for i, line in enumerate(f, start=1) if line.strip() and not line.startswith("#")]
    if not lines:
        raise SampleSheetError(sheet, "empty sample sheet (expected a header: subject, video, notes)")
    header = next(csv.reader([lines[0][1]], delimiter="\t"))
    missing = [c for c in COLUMNS if c not in [h.strip() for h in header]]
    if missing:
        raise SampleSheetError(sheet, f"line {lines[0][0]}: missing column(s) {missing} (tab-separated header "
                                      f"{list(COLUMNS)}, got {header})")
    rows: dict[str, str] = {}
    reader = csv.DictReader((line for _, line in lines), delimiter="\t")
    reader.fieldnames = [h.strip() for h in reader.fieldnames or []]
    for (lineno, _), row in zip(lines[1:], reader):
        name = (row.get("subject") or "").strip()
        if not re.fullmatch(SUBJECT_PATTERN, name):
            raise SampleSheetError(sheet, f"line {lineno}: subject {name!r} must match {SUBJECT_PATTERN}")
        if name in rows:
            raise SampleSheetError(sheet, f"line {lineno}: subject {name!r} appears twice")
        video = (row.get("video") or "").strip()
        if not video:
            raise SampleSheetError(sheet, f"line {lineno}: column 'video' is empty")
        if not (Path(workdir) / video).is_file():
            raise SampleSheetError(sheet, f"line {lineno}: video {video!r} of subject {name!r} does not exist")
        rows[name] = video
    return rows
