"""Collect ``fq-export export/run --report`` files into one table (markdown + JSON).

    python benchmarks/export_table.py benchmarks/results/export/*-report.json --out benchmarks/results/export_validation
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+")
    parser.add_argument("--out", default="benchmarks/results/export_validation")
    args = parser.parse_args()
    rows = []
    for f in args.reports:
        report = json.loads(Path(f).read_text())
        for form, a in report["artifacts"].items():
            s = a["size"]
            model = (report.get("model") or report.get("quantization", {}).get("model") or {}).get("model", Path(f).stem)
            rows.append({"model": model, "form": form, "provider": a["provider"], "bytes": a["bytes"],
                         "fp32_onnx_bytes": report["fp32_onnx"]["bytes"], "effective_bits": s["effective_bits"],
                         "quantized_codes_scales_bytes": s["quantized_layers_codes_scales_bytes"],
                         "budget_bytes": s["budget_bytes_effective_bits_over_32"],
                         "quantized_fp32_bytes": s["quantized_layers_fp32_bytes"],
                         "max_abs_err": a["max_abs_err"], "cosine": a["cosine"], "task_metric": a["task_metric"],
                         "task_agreement": a["task_agreement"], "passed": a["passed"], "report": str(f)})
    header = ("| model | form | ONNX bytes | fp32 ONNX bytes | eff. bits | quantized layers: codes+scales / budget "
              "(eff/32 x fp32) | max_abs_err | cosine (worst row) | task agreement | provider | passed |")
    lines = [header, "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['model']} | {r['form']} | {r['bytes']:,} | {r['fp32_onnx_bytes']:,} | {r['effective_bits']:.3f} | "
                     f"{r['quantized_codes_scales_bytes']:,} / {r['budget_bytes']:,.0f} of {r['quantized_fp32_bytes']:,} | "
                     f"{r['max_abs_err']:.3g} | {r['cosine']:.7f} | {r['task_metric']} {r['task_agreement']:.4f} | "
                     f"{r['provider']} | {r['passed']} |")
    text = "\n".join(lines)
    print(text)
    Path(args.out + ".md").write_text(text + "\n")
    Path(args.out + ".json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
