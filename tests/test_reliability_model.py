"""Reliability issue, items 6 and 7: a bad model, a bad device or a missing optional package is one line
``austeer: error: ...`` naming the path or value and what was expected, exit code 2, before the model loads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from austeer.cli import main
from austeer.models.loading import _embedded_gguf, resolve
from tests.test_reliability_files import PAIRS, fit_args, one_error_line

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], env: dict[str, str], prelude: str = "") -> tuple[subprocess.CompletedProcess[str], float]:
    """``austeer ARGS`` in a fresh interpreter (after ``prelude``), with ``env`` added; its result and seconds."""
    code = f"{prelude}\nimport sys\nfrom austeer.cli import main\nsys.exit(main(sys.argv[1:]))"
    full = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT), **env}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full, timeout=300)
    return proc, time.perf_counter() - start


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and "Loading weights" not in line]


# -- item 6: a bad model or device


@pytest.mark.parametrize("n", [20, 100_000, 1_785_000, 50_000_000])
def test_a_truncated_gguf_is_one_line_naming_it(n, tmp_path, capsys, monkeypatch):
    """The embedded model's GGUF cut in the header, the metadata (tokens), the tensor descriptions and the
    tensor data: one line with the file's path and where it ends, nothing converted."""
    monkeypatch.setenv("AUSTEER_CACHE", str(tmp_path / "cache"))
    folder, name = _embedded_gguf("embedded:smollm2-135m-instruct")
    cut = tmp_path / "cut.gguf"
    with (folder / name).open("rb") as src:
        cut.write_bytes(src.read(n))
    assert main(fit_args(tmp_path / "out", "--model", str(cut))) == 2
    line = one_error_line(capsys)
    assert f"error: {cut}: truncated GGUF file" in line and "expected a complete GGUF" in line
    assert not list((tmp_path / "cache").glob("gguf-*/model.safetensors"))


@pytest.mark.parametrize("config", [None, "{bad", "[1, 2]"])
def test_a_directory_with_only_or_a_bad_config_json(config, tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(config or '{"model_type": "llama"}')
    assert main(fit_args(tmp_path / "out", "--model", str(model))) == 2
    line = one_error_line(capsys)
    if config is None:
        assert f"error: {model}: no model weights" in line and "model.safetensors" in line
    else:
        assert f"error: {model / 'config.json'}: " in line and "Hugging Face model config" in line


@pytest.mark.slow
@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable"])
def test_an_unknown_hub_id_offline_fails_at_once(how, tmp_path):
    """Offline (``HF_HUB_OFFLINE``) or with the hub unreachable: one line at once, not ~30 s of retries."""
    env = {"HF_HUB_OFFLINE": "1"} if how == "HF_HUB_OFFLINE" else {"HF_ENDPOINT": "http://127.0.0.1:9"}
    env.update(HF_HUB_CACHE=str(tmp_path / "hub"), AUSTEER_CACHE=str(tmp_path / "cache"))
    if how != "HF_HUB_OFFLINE":
        env.update(HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0")
    proc, seconds = run_cli(fit_args(tmp_path / "out", "--model", "nobody/no-such-model"), env)
    assert proc.returncode == 2, proc.stderr
    [line] = error_lines(proc.stderr)
    assert line.startswith("austeer: error: nobody/no-such-model: not found locally and no network"), line
    _, local = run_cli(fit_args(tmp_path / "out", "--model", str(tmp_path / "missing")), env)  # start-up alone
    assert seconds < local + 20  # no retries (they took ~30-50 s); relative: start-up alone took 40 s under load


@pytest.mark.slow
def test_a_cached_hub_model_loads_without_the_network(tmp_path):
    """A hub id already in the local hub cache loads from it (``local_files_only``) with the hub unreachable."""
    local = Path(resolve("embedded:smollm2-135m-instruct"))
    repo = tmp_path / "hub" / "models--someone--smol"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    for f in local.iterdir():
        if not f.name.startswith("."):
            (snapshot / f.name).symlink_to(f)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    proc, _ = run_cli([*fit_args(tmp_path / "out", "--model", "someone/smol"), "--limit", "2", "--k", "1"], env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "steer.json").is_file()


@pytest.mark.parametrize("device", ["bogus", "cuda", "cuda:7"])
def test_a_bad_device_is_refused_before_anything_is_read(device, tmp_path, capsys):
    """Checked first: the pairs file does not even exist, and the device error is what is reported."""
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.device_count()}"
    assert main(fit_args(tmp_path / "out", "--device", device, pairs=tmp_path / "missing.jsonl")) == 2
    line = one_error_line(capsys)
    assert f"error: device {device!r}: " in line
    assert ("not a device name; expected cpu, cuda" if device == "bogus" else "expected cpu") in line or (
        "numbered from 0" in line
    )


def test_pairs_are_still_the_first_error_with_a_good_device(tmp_path, capsys):
    assert main(fit_args(tmp_path / "out", "--device", "cpu", pairs=tmp_path / "missing.jsonl")) == 2
    assert "missing.jsonl" in one_error_line(capsys)
    assert PAIRS.is_file()


# -- item 7: a missing optional package is one line with the pip install, before the work

#: makes ``BLOCKED`` (comma-separated top-level packages) look uninstalled: ``importlib.util.find_spec`` finds
#: nothing (``sys.modules[name] = None``, as transformers' availability checks see it) and a ``sys.meta_path``
#: finder refuses every import of them and of their submodules
BLOCKER = """
import os, sys
blocked = set(os.environ["BLOCKED"].split(","))
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Blocker())
for name in blocked:
    sys.modules[name] = None
"""


def blocked_cli(blocked: str, args: list[str], tmp_path: Path) -> str:
    """``austeer ARGS`` with ``blocked`` uninstalled: exit 2 and its one error line."""
    env = {"BLOCKED": blocked, "AUSTEER_CACHE": os.environ.get("AUSTEER_CACHE", str(Path.home() / ".cache/austeer"))}
    proc, _ = run_cli(args, env, prelude=BLOCKER)
    assert proc.returncode == 2, proc.stderr
    [line] = error_lines(proc.stderr)
    return line


@pytest.mark.parametrize(
    ("blocked", "command", "extra"),
    [
        ("matplotlib", ["inspect", "--steer", "{missing}", "--out", "{tmp}/r.html"], "austeer[report]"),
        ("matplotlib", ["tune", "--pairs", "{missing}", "--out", "{tmp}/t"], "austeer[report]"),
        ("matplotlib", ["compare", "--task", "copa", "--out", "{tmp}/c", "--model", "{missing}"], "austeer[report]"),
        ("vaderSentiment", ["eval", "--task", "sentiment", "--model", "{missing}"], "austeer[eval]"),
        ("profanity_check", ["eval", "--task", "detox", "--model", "{missing}"], "austeer[eval]"),
        ("vaderSentiment", ["compare", "--task", "sentiment", "--out", "{tmp}/c", "--model", "{missing}"], "eval"),
        ("gguf", ["export", "--format", "gguf", "--steer", "{missing}", "--out", "{tmp}/x.gguf"], "gguf"),
        ("gguf", ["fit", "--pairs", str(PAIRS), "--out", "{tmp}/s", "--model", "{tmp}/m.gguf"], "gguf"),
    ],
)
@pytest.mark.slow
def test_a_missing_package_is_named_before_any_input_is_read(blocked, command, extra, tmp_path):
    """The other inputs (spec, pairs, model) do not exist: the missing package is what is reported, so it
    is checked first, before any file is read or a model loads."""
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    args = [a.format(missing=tmp_path / "missing", tmp=tmp_path) for a in command]
    line = blocked_cli(blocked, args, tmp_path)
    assert line.startswith(f"austeer: error: {blocked!r} is not installed (") and "pip install " in line, line
    assert extra in line.split("pip install ", 1)[1]


@pytest.mark.slow
def test_a_missing_jinja2_is_named_before_the_weights_load(tmp_path):
    """The embedded model has a chat template: without jinja2 the prompts cannot be formatted."""
    line = blocked_cli("jinja2", fit_args(tmp_path / "s"), tmp_path)
    assert "'jinja2' is not installed (the chat template of embedded:smollm2-135m-instruct" in line
    assert "pip install 'jinja2" in line


@pytest.mark.slow
def test_austeer_imports_without_the_optional_packages():
    """``import austeer`` and the CLI's parser need none of them; the GGUF writers say what to install."""
    check = """
import austeer, austeer.cli, austeer.tasks
austeer.cli.build_parser()
try:
    austeer.export_gguf
except austeer.extras.MissingPackage as exc:
    print(exc)
"""
    full = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "BLOCKED": "gguf,matplotlib,vaderSentiment,profanity_check"}
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER + check], capture_output=True, text=True, env=full, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "'gguf' is not installed (austeer.export_gguf needs it): pip install 'gguf>=0.16'" in proc.stdout
