"""bench.gpu's table: the report's sections in the order they ran, figures formatted, n/a where none."""

from __future__ import annotations

from typing import Any


# ------------------------------------------------------------------------------------------------ output
def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _settings(settings: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items())


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    gpu = m["gpu"]
    print(f"\n== bench.gpu: {gpu['name'] if gpu else 'no GPU'}; {m['cpu_count']} CPUs; python {m['python']}")
    print(f"onnxruntime {m['onnxruntime']} {m['onnxruntime_providers']}; --providers {report['options']['providers']}")
    print(
        f"settings passed: {report['options']['env'] or 'none'}; load average at start {m['load_average']}, "
        f"at the end {m.get('load_average_end')}"
    )
    search = report.get("search") or {}
    variants = search.get("variants") or {}
    parts = [
        ("oceano", search.get("oceano")),
        *((f"oceano [{name}: {_settings(v['settings'])}]", v) for name, v in variants.items()),
        ("plain", search.get("plain")),
    ]
    for name, part in parts:
        if not part or "levels" not in part:
            continue
        extra = f", providers {part['providers']}" if part.get("providers") else ""
        print(
            f"\n-- search under load: {name} (started in {part['start_s']} s{extra}; "
            f"query faces {part['query_faces']}; GPU memory idle {fmt(part['gpu_mem_idle_mib'], 0)} MiB)"
        )
        print(
            f"{'clients':>7} {'200/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'503s':>6} "
            f"{'GPU % mean/max':>14} {'GPU MiB all/svc':>15} {'CPU cores':>9} {'core: cores, ms/200':>19} "
            f"{'dispatcher: cores, ms/200':>25}  other answers"
        )
        for lv in part["levels"]:
            gpu_pct = f"{fmt(lv['gpu_util_mean'], 0)}/{fmt(lv['gpu_util_max'], 0)}"
            gpu_mib = f"{fmt(lv['gpu_mem_max_mib'], 0)}/{fmt(lv['gpu_mem_service_max_mib'], 0)}"
            core = f"{fmt(lv.get('core_cpu_cores'), 2)}, {fmt(lv.get('core_cpu_ms_per_answer'), 2)}"
            dispatcher = f"{fmt(lv.get('dispatcher_cpu_cores'), 2)}, {fmt(lv.get('dispatcher_cpu_ms_per_answer'), 2)}"
            print(
                f"{lv['clients']:>7} {fmt(lv['ok_per_s']):>8} {fmt(lv['p50_ms'], 0):>8} {fmt(lv['p95_ms'], 0):>8} "
                f"{fmt(lv['p99_ms'], 0):>8} {lv['n503']:>6} {gpu_pct:>14} {gpu_mib:>15} "
                f"{fmt(lv['service_cpu_cores'], 2):>9} {core:>19} {dispatcher:>25}  {lv['errors'] or '-'}"
            )
    for name, part in variants.items():
        if "levels" in part and search.get("oceano") and "levels" in search["oceano"]:
            base = {lv["clients"]: lv["ok_per_s"] for lv in search["oceano"]["levels"]}
            print(
                f"\n-- oceano [{name}] / oceano, answers 200/s: "
                + ", ".join(
                    f"{lv['clients']} clients {fmt(lv['ok_per_s'] / base[lv['clients']], 2)}x"
                    if base.get(lv["clients"])
                    else f"{lv['clients']} clients n/a"
                    for lv in part["levels"]
                )
            )
    if search.get("ratio"):
        print(
            "\n-- Oceano / plain insightface, answers 200/s: "
            + ", ".join(f"{r['clients']} clients {fmt(r['ratio'], 2)}x" for r in search["ratio"])
        )
    ingest = report.get("ingest")
    if ingest and "images" in ingest:
        print(
            f"\n-- python -m app.ingest --local: {ingest['images']} images, {fmt(ingest['ingested'], 0)} ingested, "
            f"{fmt(ingest['faces_added'], 0)} faces: {fmt(ingest['images_per_s'])} images/s "
            f"(job), {fmt(ingest['images_per_s_wall'])} images/s over {ingest['wall_s']} s wall (model load included)"
            f"; {fmt(ingest.get('inference_workers'), 0)} inference workers"
        )
        for name, part in (report.get("ingest_variants") or {}).items():
            if "images" not in part:
                continue
            ratio = (
                part["images_per_s"] / ingest["images_per_s"]
                if part["images_per_s"] and ingest["images_per_s"]
                else None
            )
            print(
                f"-- the same [{name}: {_settings(part['settings'])}]: {fmt(part['images_per_s'])} images/s (job), "
                f"{fmt(ratio, 2)}x the defaults'; {fmt(part['ingested'], 0)} ingested, "
                f"{fmt(part.get('inference_workers'), 0)} inference workers"
            )
    stages = report.get("stages")
    if stages and "rows" in stages:
        gpu = stages["gpu"]
        print(
            f"\n-- engine stages ({stages['providers'][0]}; models loaded in {stages['load_s']} s, warm-up "
            f"{fmt(stages['warmup_s'], 2)} s; batch sizes {stages['batches']} from {stages['batches_from']}; "
            f"GPU % mean/max {fmt(gpu['gpu_util_mean'], 0)}/{fmt(gpu['gpu_util_max'], 0)}, GPU MiB max "
            f"{fmt(gpu['gpu_mem_max_mib'], 0)}, this process {fmt(gpu['gpu_mem_service_max_mib'], 0)})"
        )
        print(
            f"{'model':<16} {'batch':>5} {'first ms':>10} {'warm ms':>9} {'ms/item':>8} {'items/s':>9} "
            f"{'onnx ms':>8}  ONNX input shapes of the first call"
        )
        for r in stages["rows"]:
            if "error" in r:
                print(f"{r['model']:<16} {r['batch']:>5}  failed: {r['error']}")
                continue
            shapes = ", ".join(r["onnx_first_shapes"]) if r["onnx_first_shapes"] else "-"
            print(
                f"{r['model']:<16} {r['batch']:>5} {fmt(r['first_ms']):>10} {fmt(r['warm_ms']):>9} "
                f"{fmt(r['warm_ms_per_item'], 2):>8} {fmt(r['items_per_s'], 0):>9} {fmt(r['onnx_warm_ms']):>8}  "
                f"{shapes} ({r['onnx_first_runs']} runs)"
            )
    for name, error in report["errors"].items():
        lines = error.splitlines() or [""]
        cause = next((line for line in reversed(lines) if "Error" in line), lines[-1])
        print(f"\n!! {name} failed (the whole message is in the JSON and above): {cause}")
