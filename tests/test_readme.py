"""The README's generated tables agree with the benchmark records kept in ``docs/bench/``
(``benchmarks/readme.py``), and that script rewrites, checks and refuses as it says."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("readme_tables", REPO / "benchmarks" / "readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_tables_are_those_of_the_committed_records(capsys):
    assert _script().main(["--check"]) == 0, capsys.readouterr().err


def test_every_bundled_model_is_in_the_readmes_benchmark():
    """(tests/test_bench.py holds the default model to the rule on these records; a bundled model absent
    from them would not be ranked at all.)"""
    from maskdn import zoo
    from maskdn.generalization import read_records

    for f in ("results-grid.json.gz", "results-polyu.json.gz"):
        methods = {r["method"] for r in read_records(REPO / "docs" / "bench" / f)}
        assert not set(zoo.names()) - methods, f"bundled models missing from docs/bench/{f}"


def test_commands_name_bundled_models_and_built_in_methods():
    from maskdn.zoo import names

    model = names()[0]
    grid = [_record(d, f"i{i}", m, "gaussian", 15.0, 20.0) for d in ("Kodak24", "CBSD68") for i in range(3)
            for m in (model, "noisy", "nlm")]
    polyu = [_record("PolyU", "p0", m, "real", None, 30.0) for m in ("noisy", model)]
    assert _script().commands_block(grid, polyu) == (
        f"```bash\nmaskdn bench --data Kodak24/ CBSD68/ --model {model} --method noisy nlm --passes 1 --limit 3 "
        f"--jobs 2 --out bench-grid/\nmaskdn bench --data PolyU/ --model {model} --method noisy --passes 1 --jobs 2 "
        "--out bench-polyu/\n```\n")


def _record(dataset, image, method, noise, level, psnr):
    return {"dataset": dataset, "image": image, "method": method, "passes": 1, "noise": noise, "level": level,
            "psnr": psnr, "ssim": 0.5, "seed": 0}


def _runs(tmp_path, grid_images=2):
    grid = [_record(d, f"i{i}", m, "gaussian", lv, 20.0 + i + lv / 10 + (m == "a"))
            for d in ("Kodak24", "CBSD68") for i in range(grid_images) for m in ("a", "b") for lv in (15.0, 25.0)]
    polyu = [_record("PolyU", f"p{i}", m, "real", None, 30.0 + (m == "b")) for i in range(3) for m in ("a", "b")]
    (tmp_path / "grid.json.gz").write_bytes(gzip.compress(json.dumps(grid).encode()))
    (tmp_path / "polyu").mkdir()
    (tmp_path / "polyu" / "results.json").write_text(json.dumps(polyu))
    return grid, polyu


def test_blocks_are_rewritten_then_check_passes(tmp_path, capsys):
    mod = _script()
    grid, _ = _runs(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- generated: polyu -->\nstale\n<!-- end: polyu -->\nmiddle\n"
                      "<!-- generated: ranking -->\n<!-- end: ranking -->\nend\n")
    args = ["--readme", str(readme), "--grid", str(tmp_path / "grid.json.gz"), "--polyu", str(tmp_path / "polyu")]
    assert mod.main([*args, "--check"]) == 1
    assert "block 'polyu' differs" in capsys.readouterr().err and "stale" in readme.read_text()  # check writes nothing
    assert mod.main(args) == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- generated: polyu -->\n#### PolyU (3 images)\n\n| method | real |\n")
    assert "| b | **31.00 / 0.500** |" in text and "middle\n" in text and text.endswith("<!-- end: ranking -->\nend\n")
    # ranking: a wins both grids by 1 dB out of distribution (σ=25 only), b wins PolyU by 1 dB: equal weights
    assert "| 1 | a | 24.00 | 24.00 | 30.00 | 26.00 |\n| 2 | b | 23.00 | 23.00 | 31.00 | 25.67 |" in text
    generated, why = mod.blocks(grid, json.loads((tmp_path / "polyu" / "results.json").read_text()))
    assert set(generated) == {"kodak24", "cbsd68", "polyu", "ranking", "wins", "reported", "scores", "demo"}
    assert why == {"commands": "a, b: neither a bundled model nor a built-in method"}  # no command remakes them
    assert "| gaussian (1) | a (24.00; +1.00) | a (24.00; +1.00) | – |" in generated["wins"]
    assert generated["reported"].startswith("| condition | IDF, reported |")
    assert mod.main([*args, "--check"]) == 0


def test_an_incomplete_grid_is_refused_saying_why(tmp_path, capsys):
    mod = _script()
    grid, _ = _runs(tmp_path)
    partial = [r for r in grid if not (r["dataset"] == "CBSD68" and r["method"] == "b" and r["image"] == "i1")]
    (tmp_path / "grid.json.gz").write_bytes(gzip.compress(json.dumps(partial).encode()))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- generated: cbsd68 -->\n<!-- end: cbsd68 -->\n")
    before = readme.read_text()
    assert mod.main(["--readme", str(readme), "--grid", str(tmp_path / "grid.json.gz"),
                     "--polyu", str(tmp_path / "polyu")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "block 'cbsd68': the records of CBSD68 are incomplete (b: CBSD68: 2 of 2" in err
    assert readme.read_text() == before


@pytest.mark.parametrize("text, says", [("no blocks\n", "has no generated block"),
                                        ("<!-- generated: set12 -->\n<!-- end: set12 -->\n", "no such block")])
def test_a_readme_without_usable_blocks_is_one_line(tmp_path, capsys, text, says):
    _runs(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(text)
    assert _script().main(["--readme", str(readme), "--grid", str(tmp_path / "grid.json.gz"),
                           "--polyu", str(tmp_path / "polyu")]) == 1
    assert says in capsys.readouterr().err


def test_gzipped_records_load_like_plain_ones_and_a_broken_one_is_one_line(tmp_path):
    from maskdn.errors import MaskdnError
    from maskdn.generalization import load_results

    grid, _ = _runs(tmp_path)
    assert load_results(tmp_path / "grid.json.gz") == grid
    (tmp_path / "broken.json.gz").write_bytes(gzip.compress(b"[{")[:-4])
    with pytest.raises(MaskdnError, match=r"broken\.json\.gz: cannot read benchmark records from it \("):
        load_results(tmp_path / "broken.json.gz")


def test_scores_block_bolds_the_best_per_dataset_and_names_the_unscored():
    rows = [{"name": "a", "scores": {"K": {"g": 30.0, "p": 25.5}, "P": {"real": 37.0}}},
            {"name": "b", "scores": {"K": {"g": 29.0, "p": 26.0}}}, {"name": "c", "scores": {}}]
    assert _script().scores_block(rows).splitlines() == [
        "| dataset | model | g | p | real |", "|---|---|---|---|---|",
        "| K | `a` | **30.00** | 25.50 | – |", "| K | `b` | 29.00 | **26.00** | – |",
        "| P | `a` | – | – | **37.00** |", "", "Not scored on the full test sets yet: `c`."]
