"""Rule documents as text: the libyaml classes when the wheel has them, and the same documents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.cli import documents
from routes.errors import PeelError

SAMPLE = """\
services:
  - name: legacy
    endpoints: [http://10.0.0.5:8080]
defaults: &d {path_prefix: /a}
routes:
  - name: "a:b"
    match: *d
    service: legacy
    note: "ünïcode"
"""


def test_the_c_classes_are_used_when_libyaml_is_there() -> None:
    if not yaml.__with_libyaml__:
        pytest.skip("this PyYAML wheel was built without libyaml")
    assert documents.yaml_classes() == (yaml, yaml.CSafeLoader, yaml.CSafeDumper)


def test_the_cli_imports_yaml_only_when_it_reads_or_writes_yaml() -> None:
    # `peel serve` runs through the CLI: a serving process never reads YAML
    code = ("import sys; from gateway.cli.parser import build_parser; build_parser(); "
            "assert 'yaml' not in sys.modules, 'imported'; "
            "from gateway.cli.documents import dump_yaml; dump_yaml({}); assert 'yaml' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_loading_gives_what_the_python_loader_gives(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(SAMPLE, encoding="utf-8")
    assert documents.load_document(str(path)) == yaml.load(SAMPLE, Loader=yaml.SafeLoader)


def test_dumping_gives_what_the_python_dumper_gives() -> None:
    data = yaml.load(SAMPLE, Loader=yaml.SafeLoader)
    assert documents.dump_yaml(data) == yaml.safe_dump(data, sort_keys=False, default_flow_style=False,
                                                       allow_unicode=True, width=1 << 16)


def test_python_tags_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("!!python/object/apply:os.system ['true']\n", encoding="utf-8")
    with pytest.raises(PeelError, match="is not valid YAML or JSON"):
        documents.load_document(str(path))


def test_a_json_file_gives_what_yaml_gives_and_a_flow_mapping_is_still_yaml(tmp_path: Path) -> None:
    data = yaml.load(SAMPLE, Loader=yaml.SafeLoader)
    path = tmp_path / "rules.json"
    path.write_text("\n  " + json.dumps(data), encoding="utf-8")
    assert documents.load_document(str(path)) == data
    path.write_text("{services: [], routes: [{name: a}]}  # flow style\n", encoding="utf-8")
    assert documents.load_document(str(path)) == {"services": [], "routes": [{"name": "a"}]}
