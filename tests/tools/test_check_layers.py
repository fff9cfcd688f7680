"""tools/check_layers.py on small fake trees: each kind of violation, and a clean tree."""

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "check_layers.py"
_spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
assert _spec is not None and _spec.loader is not None
check_layers = importlib.util.module_from_spec(_spec)
sys.modules["check_layers"] = check_layers  # dataclasses look their module up by name
_spec.loader.exec_module(check_layers)


def make_tree(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (path -> source) under ``root``; every folder gets an __init__.py."""
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    for folder in [p for p in root.rglob("*") if p.is_dir()]:
        if folder.relative_to(root).parts[0] != "tests":
            (folder / "__init__.py").touch()
    return root


def violations(root: Path) -> list[str]:
    return check_layers.check(root)[0]


CLEAN = {
    "wire/__init__.py": "from .codec import encode\nfrom .keys import Identity\n",
    "wire/codec.py": "import json\n\ndef encode(x):\n    return json.dumps(x)\n",
    "wire/keys.py": "from . import codec\nfrom .codec import encode\n",
    "gossip/host.py": "import trio\nfrom aipg.wire import Identity\nfrom ..wire.keys import Identity\n",
    "models/manifest.py": "import aipg.wire.codec\nfrom aipg import wire\n",
    "pouw/types.py": "from aipg.models.manifest import *\n",
    "stake/ledger.py": """\
        from typing import TYPE_CHECKING

        from aipg.pouw.types import Height

        if TYPE_CHECKING:
            from aipg.models.manifest import ModelId
        """,
    "node/config.py": "from aipg.stake.ledger import Ledger\n",
    "node/protocol/topics.py": "from ..config import NodeConfig\n",
    "node/services/worker.py": "from ..protocol import topics\nfrom aipg.gossip.host import Host\n",
    "node/http/api.py": "from ..services.worker import Worker\nfrom .. import config\n",
    "node/app.py": "from .http.api import app\nfrom .services import worker\n",
    "devnet/run.py": "from aipg.node.app import main\n",
    "testing/fakes.py": "from aipg.node.services.worker import Worker\n",
    "cli/main.py": "from aipg.devnet.run import run\nfrom aipg.node import app\n",
    "tests/test_x.py": "from aipg.cli.main import main\nfrom aipg.wire import nothing_checked\n",
    "bench/b.py": "from aipg.cli.main import main\n",
    # leaves, so that a test's upward import into them makes no cycle as well
    "pouw/errors.py": "",
    "cli/errors.py": "",
}


def test_a_clean_tree_passes(tmp_path):
    root = make_tree(tmp_path, CLEAN)
    found, summary = check_layers.check(root)
    assert found == []
    assert "no upward imports, no cycles" in summary


def test_an_upward_import_between_packages_is_caught(tmp_path):
    root = make_tree(tmp_path, {**CLEAN, "wire/codec.py": "\n\nfrom aipg.pouw.errors import X\n"})
    assert violations(root) == [
        "wire/codec.py:3: wire (rank 0) imports aipg.pouw.errors (pouw, rank 2): "
        "imports only point to a lower rank"
    ]


@pytest.mark.parametrize(
    ("path", "source", "target"),
    [
        ("gossip/host.py", "from aipg.models.manifest import ModelId\n", "aipg.models.manifest"),
        ("models/manifest.py", "import aipg.gossip.host\n", "aipg.gossip.host"),
        ("devnet/run.py", "from aipg.testing import fakes\n", "aipg.testing.fakes"),
    ],
)
def test_siblings_must_not_import_each_other(tmp_path, path, source, target):
    root = make_tree(tmp_path, {**CLEAN, path: source})
    [line] = violations(root)
    assert line.startswith(f"{path}:1: ")
    assert f"imports {target} " in line
    assert "are siblings and must not import each other" in line


def test_cli_must_not_import_testing(tmp_path):
    root = make_tree(tmp_path, {**CLEAN, "cli/main.py": "from aipg.testing.fakes import F\n"})
    assert violations(root) == [
        "cli/main.py:1: cli imports aipg.testing.fakes: "
        "the shipped command must not depend on test-only fakes"
    ]


@pytest.mark.parametrize(
    ("path", "source", "target", "ranks"),
    [
        (
            "node/config.py",
            "from aipg.node.protocol.topics import T\n",
            "aipg.node.protocol.topics",
            ("node/ (0)", "node/protocol/, 1"),
        ),
        (
            "node/protocol/topics.py",
            "def f():\n    from ..services import worker\n",
            "aipg.node.services.worker",
            ("node/protocol/ (1)", "node/services/, 2"),
        ),
        (
            "node/services/worker.py",
            "from aipg.node.http.api import app\n",
            "aipg.node.http.api",
            ("node/services/ (2)", "node/http/, 3"),
        ),
        (
            "node/http/api.py",
            "from ..app import main\n",
            "aipg.node.app",
            ("node/http/ (3)", "node/app.py, 4"),
        ),
    ],
)
def test_a_node_sub_layer_must_not_import_a_higher_one(tmp_path, path, source, target, ranks):
    root = make_tree(tmp_path, {**CLEAN, path: source})
    [line] = [v for v in violations(root) if not v.startswith("cycle")]
    src, dst = ranks
    assert line.startswith(f"{path}:")
    assert f"sub-layer {src} imports {target} (sub-layer {dst})" in line


def test_sub_layers_come_from_the_table(tmp_path, monkeypatch):
    monkeypatch.setitem(check_layers.SUBLAYERS, "pouw", (("", 0), ("verify/", 1)))
    files = {**CLEAN, "pouw/verify/votes.py": "", "pouw/records.py": "from .verify import votes\n"}
    [line] = violations(make_tree(tmp_path, files))
    assert line.startswith(
        "pouw/records.py:1: sub-layer pouw/ (0) imports aipg.pouw.verify.votes (sub-layer pouw/verify/, 1)"
    )


def test_a_cycle_through_a_function_level_import_is_caught(tmp_path):
    files = {
        **CLEAN,
        "wire/codec.py": "import json\n",
        "wire/keys.py": "from .codec import encode\n",
        "wire/peerid.py": "from .keys import Identity\n",
    }
    files["wire/codec.py"] += "\ndef peer_id():\n    from aipg.wire.peerid import PeerId\n"
    assert violations(make_tree(tmp_path, files)) == [
        "cycle among 3 modules: wire/codec.py, wire/keys.py, wire/peerid.py "
        "(e.g. wire/codec.py:4 -> wire/peerid.py:1 -> wire/keys.py:1 -> wire/codec.py)"
    ]


def test_a_cycle_through_a_type_checking_import_is_caught(tmp_path):
    files = {
        **CLEAN,
        "stake/chain.py": "from .ledger import Ledger\n",
        "stake/ledger.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from aipg.stake.chain import Chain\n",
    }
    assert violations(make_tree(tmp_path, files)) == [
        "cycle among 2 modules: stake/chain.py, stake/ledger.py "
        "(e.g. stake/chain.py:1 -> stake/ledger.py:3 -> stake/chain.py)"
    ]


def test_every_strongly_connected_component_is_reported(tmp_path):
    files = {
        **CLEAN,
        "pouw/a.py": "from . import b\n",
        "pouw/b.py": "from . import a\n",
        "stake/c.py": "from .d import x\n",
        "stake/d.py": "from .c import y\n",
    }
    assert violations(make_tree(tmp_path, files)) == [
        "cycle among 2 modules: pouw/a.py, pouw/b.py (e.g. pouw/a.py:1 -> pouw/b.py:1 -> pouw/a.py)",
        "cycle among 2 modules: stake/c.py, stake/d.py (e.g. stake/c.py:1 -> stake/d.py:1 -> stake/c.py)",
    ]


@pytest.mark.parametrize(
    ("path", "source", "target"),
    [
        ("wire/keys.py", "from ..pouw import errors\n", "aipg.pouw.errors"),  # `from .. import y`
        ("wire/keys.py", "from ..pouw.errors import E\n", "aipg.pouw.errors"),
        ("wire/keys.py", "from ..stake import *\n", "aipg.stake"),  # the package itself
        ("wire/__init__.py", "from ..pouw.errors import E\n", "aipg.pouw.errors"),
        ("node/protocol/topics.py", "from ...pouw.types import H\n", None),
        ("node/protocol/topics.py", "from ...cli.errors import E\n", "aipg.cli.errors"),
    ],
)
def test_relative_imports_resolve_to_the_module_they_name(tmp_path, path, source, target):
    found = violations(make_tree(tmp_path, {**CLEAN, path: source}))
    if target is None:
        assert found == []
    else:
        [line] = found
        assert line.startswith(f"{path}:1: ") and f"imports {target} (" in line


def test_from_package_import_module_resolves_to_the_module_not_the_package(tmp_path):
    # wire/__init__ imports keys; keys importing the package's other module is no cycle,
    # but keys importing a name from the package __init__ is one.
    files = {**CLEAN, "wire/keys.py": "from . import codec\n"}
    assert violations(make_tree(tmp_path, files)) == []
    files = {**CLEAN, "wire/keys.py": "from . import encode\n"}
    assert violations(make_tree(tmp_path, files)) == [
        "cycle among 2 modules: wire/__init__.py, wire/keys.py "
        "(e.g. wire/__init__.py:2 -> wire/keys.py:1 -> wire/__init__.py)"
    ]


def test_an_import_of_ours_that_names_no_module_is_reported(tmp_path):
    root = make_tree(tmp_path, {**CLEAN, "stake/ledger.py": "import aipg.pouw.typez\n"})
    assert violations(root) == [
        "stake/ledger.py:1: `import aipg.pouw.typez`: no module aipg.pouw.typez in the tree"
    ]


def test_a_package_without_a_rank_is_reported(tmp_path):
    root = make_tree(tmp_path, {**CLEAN, "extras/thing.py": "from aipg.cli.main import main\n"})
    assert violations(root) == [
        "extras/: package aipg.extras has no rank; add it to PACKAGE_RANKS in tools/check_layers.py"
    ]


def test_the_command_exits_1_with_one_line_per_violation_and_0_when_clean(tmp_path):
    bad = make_tree(tmp_path / "bad", {**CLEAN, "wire/codec.py": "from aipg.cli import errors\n"})
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "wire/codec.py:1: wire (rank 0) imports aipg.cli.errors (cli, rank 6): "
        "imports only point to a lower rank"
    ]
    clean = make_tree(tmp_path / "clean", CLEAN)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(clean)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert result.stdout.startswith("check_layers: 28 modules in 9 packages")
    assert len(result.stdout.splitlines()) == 1
