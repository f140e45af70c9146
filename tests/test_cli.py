"""The command line as a user runs it, on the packaged all-MiniLM-L6-v2 and offline text."""
import json
import os
import subprocess
import sys

import pytest

from fq_export.cli import main


def run_cli(*args):
    return main([str(a) for a in args])


def test_layer_error_on_minilm_subset(tmp_path, capsys):
    out = tmp_path / "le.json"
    code = run_cli("layer-error", "--model", "minilm", "--bits", "2", "--calib-samples", "16",
                   "--heldout-samples", "16", "--methods", "rtn,gptq,framequant-r1.1-both", "--json", out,
                   "--no-progress")
    assert code == 0
    records = json.loads(out.read_text())
    assert len(records) == 36 * 3
    assert set(records[0]) >= {"layer", "method", "r", "bits", "effective_bits", "rel_proxy_loss", "seconds"}
    by_method = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r["rel_proxy_loss"])
    mean = {m: sum(v) / len(v) for m, v in by_method.items()}
    assert mean["framequant-r1.1-both"] < mean["rtn"]
    assert "mean_rel_proxy_loss" in capsys.readouterr().out


def test_quantize_eval_roundtrip_is_deterministic(tmp_path):
    args = ["quantize", "--model", "minilm", "--r", "1.1", "--bits", "2", "--calib", "corpus:docstrings+flatland",
            "--calib-samples", "8", "--seed", "3", "--finetune-steps", "0", "--no-progress"]
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert run_cli(*args, "--out", a, "--report", tmp_path / "a.json") == 0
    assert run_cli(*args, "--out", b) == 0
    assert a.read_bytes() == b.read_bytes()
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["totals"]["quantized_layers"] == 36 and 2.0 < report["totals"]["effective_bits"] < 3.0
    assert report["calibration"] == {"source": "corpus:docstrings+flatland:calib", "samples": 8}
    assert report["budget_bits"] is None  # --r given: the fixed recipe on every layer
    assert {layer["method"] for layer in report["layers"]} == {"framequant-r1.1-both"}
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("sentence1\tsentence2\tscore\n"
                     "A man is playing a guitar.\tA man plays the guitar.\t5.0\n"
                     "A dog runs in the park.\tThe stock market fell today.\t0.2\n"
                     "Children are reading books.\tKids read books in school.\t4.2\n"
                     "The sun is hot.\tA cat sleeps on the sofa.\t0.5\n")
    out = tmp_path / "eval.json"
    assert run_cli("eval", "--checkpoint", a, "--pairs", pairs, "--limit", "32", "--json", out) == 0
    result = json.loads(out.read_text())
    assert -1.0 <= result["spearman"] <= 1.0 and 0.0 < result["embedding_cosine"] <= 1.0


def test_default_recipe_spends_its_own_bits_by_a_budget(tmp_path):
    """Without --r and --side, a 2-bit MiniLM spends r 1.1 both's bits, layer by layer, where its
    output is most sensitive: mixed recipes, no more bits than the fixed recipe."""
    from fq_export.budget import recipe_bits
    from fq_export.config import QuantConfig
    from fq_export.models import load_model

    report_path = tmp_path / "r.json"
    assert run_cli("quantize", "--model", "minilm", "--bits", "2", "--calib-samples", "8", "--finetune-steps", "0",
                   "--no-progress", "--out", tmp_path / "m.safetensors", "--report", report_path) == 0
    report = json.loads(report_path.read_text())
    fixed = recipe_bits(load_model("minilm"), QuantConfig(bits=2))
    assert report["budget_bits"] == pytest.approx(fixed)
    assert report["totals"]["effective_bits"] <= fixed + 1e-9
    recipes = {(layer["bits"], layer["method"]) for layer in report["layers"]}
    assert len(recipes) > 1 and any(bits == 4 for bits, _ in recipes)


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    assert run_cli("quantize", "--model", "no-such-model", "--out", tmp_path / "x.safetensors") == 2
    assert "unknown model" in capsys.readouterr().err
    assert run_cli("quantize", "--model", "minilm", "--r", "0.5", "--out", tmp_path / "x.safetensors") == 2
    assert "redundancy" in capsys.readouterr().err
    assert run_cli("eval", "--checkpoint", tmp_path / "missing.safetensors", "--json", tmp_path / "e.json") == 2
    assert "does not exist" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"garbage")
    assert run_cli("eval", "--checkpoint", corrupt, "--json", tmp_path / "e.json") == 2
    assert "safetensors" in capsys.readouterr().err
    assert run_cli("quantize", "--model", "vit-b", "--out", tmp_path / "v.safetensors") == 2
    assert "--weights" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json")) and not (tmp_path / "x.safetensors").exists()


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "fq_export.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "layer-error" in out.stdout


def test_layers_import_one_way():
    """The core package imports nothing of the application (cli, converters, calib); inside the
    command line, ``common`` imports no subcommand and the subcommands import no ``main``."""
    import ast
    from pathlib import Path

    code = ("import sys, fq_export, fq_export.pipeline, fq_export.checkpoint, fq_export.files, fq_export.io, "
            "fq_export.models, fq_export.accounting; "
            "print(sorted(m for m in sys.modules if m.startswith(('fq_export.cli', 'converters', 'calib'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
    folder = Path(__file__).resolve().parents[1] / "fq_export" / "cli"
    imports = {}
    for path in folder.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names.add(node.module or "")
                names.update(a.name for a in node.names if not node.module)
        imports[path.stem] = names
    assert imports["common"] <= set(), imports["common"]
    for sub in ("layer_error", "quantize", "eval", "export", "evaluate"):
        assert imports[sub] <= {"common", "evaluate"}, (sub, imports[sub])


def test_readme_main_command_runs_in_an_empty_folder(tmp_path):
    """Command 1 of the README, from its ``mkdir`` on, in an empty folder (a fresh clone has no
    ``out/``): exit 0, the ONNX file and a report whose validation passed. Calibration and
    validation are cut short by options appended after the README's own."""
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    line = next(ln for ln in readme.splitlines() if ln.startswith("pip install") and "fq-export " in ln)
    steps = [shlex.split(part) for part in re.split(r"\s*&&\s*", line)]
    assert [s[0] for s in steps][-2:] == ["mkdir", "fq-export"], steps
    assert subprocess.run(steps[-2], cwd=tmp_path).returncode == 0
    args = steps[-1][1:] + ["--calib-samples", "8", "--finetune-steps", "0", "--validate-samples", "2", "--no-progress"]
    out = subprocess.run([sys.executable, "-m", "fq_export.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.returncode == 0, out.stderr[-2000:]
    onnx_out = tmp_path / args[args.index("--out") + 1]
    report = json.loads((tmp_path / args[args.index("--report") + 1]).read_text())
    assert onnx_out.stat().st_size > 1_000_000
    assert report["passed"] is True and report["cosine"] > 0.9999 and report["rejected_path"] is None
