"""The maths lives in the project: nothing cites a file users do not have, and every citation
key used in the code, docs and suites is defined in docs/methods.md's references."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [*ROOT.glob("src/pinnopt/**/*.py"), *ROOT.glob("docs/*.md"), ROOT / "README.md",
           *ROOT.glob("benchmarks/suites/*.toml"), *ROOT.glob("benchmarks/*.md")]
KEY = re.compile(r"\[([A-Z][A-Z0-9]+(?:-[A-Z0-9]+)*)\](?!\()")


def test_no_file_cites_the_unshipped_methods_note():
    citing = [str(p.relative_to(ROOT)) for p in SOURCES if "METHODS.md" in p.read_text()]
    assert citing == []


def test_every_citation_key_is_defined_once_in_the_references():
    methods = (ROOT / "docs" / "methods.md").read_text()
    references = methods[methods.index("## References"):]
    defined = re.findall(r"^- \*\*\[([A-Z0-9-]+)\]\*\*", references, flags=re.M)
    assert len(defined) == len(set(defined))
    used = {key for p in SOURCES for key in KEY.findall(p.read_text())}
    used -= {"DESCRIPTION"}  # a Python subscript (checkpoint.py), not a citation
    assert sorted(used - set(defined)) == []
