"""The training campaign's mechanics (campaign/campaign.py): runs start in the background from their
committed state, stop with their newest state copied back for the commit, and continue on a "new
machine" (no local run folders) to exactly the weights of one uninterrupted run."""

from __future__ import annotations

import gzip
import json
import shutil
import time

import pytest
import torch
from conftest import campaign_script
from test_train import make_images

from maskdn.train import load_config, train
from maskdn.train.checkpoint import load_state

campaign, forecast, targets, writeup = (campaign_script(n) for n in ("campaign", "forecast", "targets", "writeup"))


def _wait_until(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A repository with one campaign run of the tiny preset (hold-out validation on, saves only on stop)."""
    data = make_images(tmp_path / "data", sizes=((40, 48), (33, 29), (30, 40)))
    run = tmp_path / "repo" / "campaign" / "tiny"
    run.mkdir(parents=True)
    (run / "config.toml").write_text(
        f'data = "{data}"\nout = "runs/campaign/tiny"\npreset = "tiny"\npatch_size = 16\nbatch_size = 2\n'
        'iterations = 80\nschedule = "wsd"\nwarmup = 5\nholdout = 1\nval_every = 20\nval_crop = 16\n'
        'val_noise = ["gaussian:15", "poisson:3"]\nsave_every = 1000\nlog_every = 1\nbf16 = false\n'
        'tensorboard = false\ndevice = "cpu"\nthreads = 1\n')
    (run.parent / "README.md").write_text(f"# runs\n{writeup.README_BEGIN}\n{writeup.README_END}\nend\n")
    monkeypatch.chdir(tmp_path / "repo")
    return tmp_path / "repo"


def _log_rows(root) -> int:
    log = root / "runs" / "campaign" / "tiny" / "log.csv"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_runs_survive_a_stop_and_a_new_machine(root):
    assert "started at iteration 0 (1 thread," in campaign.start(root, doublings=0, threads=1)[0]
    assert "already running" in campaign.start(root, doublings=0, threads=1)[0]
    _wait_until(lambda: _log_rows(root) > 25)  # past the first validation at iteration 20
    lines = campaign.stop(root)
    assert lines[0] == "tiny: stopped" and "saved iteration" in lines[1]
    committed = root / "campaign" / "tiny" / "state.pt"
    first = load_state(committed)["iteration"]
    assert 20 < first < 80 and campaign.running_pid(root, "tiny") is None
    readme = (root / "campaign" / "README.md").read_text()
    assert f"| `tiny` | input 0%–90%, attention 75% | {first:,} of 80 | {first * 2:,} |" in readme
    assert "gaussian:15" in readme and readme.endswith("end\n")
    assert (root / "docs" / "campaign.png").stat().st_size > 0

    shutil.rmtree(root / "runs")  # a new machine: only what was committed is there
    assert f"started at iteration {first}" in campaign.start(root, doublings=0, threads=1)[0]
    _wait_until(lambda: campaign.running_pid(root, "tiny") is None)
    assert "saved iteration 80" in campaign.save(root)[0]
    assert "campaign state is current (iteration 80)" in campaign.save(root)[0]

    cfg = load_config(root / "campaign" / "tiny" / "config.toml", {"out": str(root / "straight")})
    train(cfg, progress=False)
    a, b = load_state(root / "straight" / "state.pt"), load_state(committed)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["module"][k], b["ema"]["module"][k]) for k in a["ema"]["module"])
    assert [e["iteration"] for e in b["val_history"]] == [20, 40, 60, 80]
    assert [e["psnr"] for e in b["val_history"]] == [e["psnr"] for e in a["val_history"]]

    # a cool-down branch: the committed state is untouched, its export and scores are kept
    before = committed.read_bytes()
    line = campaign.cooldown(root, "tiny", 4)
    assert "cool-down of 4 iterations from iteration 80" in line
    assert committed.read_bytes() == before
    record = campaign.read_cooldowns(root)[0]
    assert record["patches"] == 160 and record["patches_with_cooldown"] == 168 and set(record["val_psnr"]) == {"gaussian:15", "poisson:3"}
    assert (root / record["weights"]).is_file()
    assert "160 patches (benchmark: not yet): gaussian:15" in (root / "campaign" / "README.md").read_text()

    # a longer target resumes the finished run (wsd)
    assert "iterations = 90" in campaign.extend(root, "tiny", 90)
    assert load_config(root / "campaign" / "tiny" / "config.toml").iterations == 90


def test_milestones_double_the_patches_up_to_the_runs_length():
    assert campaign.milestones(62500) == [7813, 15625, 31250, 62500]  # 125,008, 250k, 500k, 1M patches of 16
    assert campaign.milestones(80, 2) == [40, 80] and campaign.milestones(80, 0) == []


def test_run_cools_down_and_benchmarks_at_each_milestone_without_changing_the_run(root, tmp_path):
    bench_set = make_images(tmp_path / "bench-set", sizes=((24, 24), (20, 28), (16, 20)))  # the grid takes 2
    plan = (campaign.Part("grid", ("bench-set",), 2), campaign.Part("later", ("no-such-set",), None))
    assert not campaign.finished(root, "tiny", 2, plan)
    line = campaign.run(root, "tiny", doublings=2, plan=plan, noises=["gaussian:15", "poisson:3"], cooldown_iterations=3)
    assert line == "tiny: finished at iteration 80"
    records = campaign.read_cooldowns(root)
    assert [(r["iteration"], r["patches"], r["cooldown"]) for r in records] == [(40, 80, 3), (80, 160, 3)]
    for r in records:  # the part whose dataset this machine lacks waits; the other is kept
        assert set(r["bench"]) == {"grid"}
        kept = campaign._load_results(root / r["bench"]["grid"])
        assert sorted({x["method"] for x in kept}) == sorted({"noisy", f"tiny-{r['patches']}"})
        assert len(kept) == 2 * 2 * 2  # images × noises × methods
    assert "waits for a machine with" in "\n".join(campaign.bench(root, records[0], plan, ["gaussian:15"]))
    assert writeup.bench_progress(records[0], plan) == "benchmark: grid done"
    assert writeup.bench_progress(records[0], plan[:1]) == "benchmarked"
    assert campaign.finished(root, "tiny", 2, plan)  # what waits for another machine's data is not work left here
    assert not campaign.finished(root, "tiny", 2, plan[:1] + (campaign.Part("later", ("bench-set",), None),))

    # a part of its own conditions on every image takes the records the grid has, and computes the rest
    keep = root / records[0]["bench"]["grid"]
    grid = campaign._load_results(keep)
    mine = next(r for r in grid if r["noise"] == "poisson" and r["method"] != "noisy")
    mine["psnr"] = 99.0  # were it recomputed, it would not be 99
    campaign.write_records(keep, grid)
    full = campaign.Part("full", ("bench-set",), None, lambda: ["poisson:3"], readme=False)
    assert "benchmarked on full (6 records" in "\n".join(campaign.bench(root, records[0], (full,)))
    got = campaign._load_results(root / campaign.read_cooldowns(root)[0]["bench"]["full"])
    assert len(got) == 3 * 2 and {r["noise"] for r in got} == {"poisson"}  # images × methods
    assert [r["psnr"] for r in got if r["image"] == mine["image"] and r["method"] == mine["method"]] == [99.0]
    assert writeup.bench_progress(campaign.read_cooldowns(root)[0], plan[:1] + (full,)) == "benchmarked"

    # stopping at the milestone and branching there changed nothing: one straight run of 80 is the same
    cfg = load_config(root / "campaign" / "tiny" / "config.toml", {"out": str(root / "straight")})
    train(cfg, progress=False)
    a, b = load_state(root / "straight" / "state.pt"), load_state(root / "runs" / "campaign" / "tiny" / "state.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [e["psnr"] for e in b["val_history"]] == [e["psnr"] for e in a["val_history"]]

    # a benchmark part-way on another machine resumes from the records committed in campaign/bench/
    keep = root / records[1]["bench"]["grid"]
    partial = campaign._load_results(keep)[:3]
    partial[0]["psnr"] = 99.0  # a record computed "elsewhere": kept, not recomputed
    with gzip.open(keep, "wt") as f:
        json.dump(partial, f)
    for r in records:
        r["bench"] = {}
    campaign._write_cooldowns(root, records)
    shutil.rmtree(root / "runs" / "campaign" / "bench")
    assert campaign.run(root, "tiny", doublings=2, plan=plan[:1], noises=["gaussian:15", "poisson:3"]) == "tiny: finished at iteration 80"
    again = campaign._load_results(keep)
    assert len(again) == 8 and again[0]["psnr"] == 99.0
    assert all(r["bench"] == {"grid": str(keep.relative_to(root))} or r["iteration"] == 40 for r in campaign.read_cooldowns(root))


def _records(method, psnr_of):
    """Grid and PolyU records of one method: psnr_of(dataset, condition) for 2 images each."""
    out = []
    for ds, conds in (("Kodak24", ["gaussian:15", "poisson:3", "speckle:0.04"]), ("CBSD68", ["gaussian:15", "poisson:3"]),
                      ("PolyU", ["real"])):
        for c in conds:
            noise, _, level = c.partition(":")
            for image in ("a", "b"):
                out.append({"dataset": ds, "image": image, "method": method, "passes": 1, "noise": noise,
                            "level": float(level) if level else None, "psnr": psnr_of(ds, c), "ssim": 0.5, "seed": 0})
    return out


def test_a_run_alone_with_work_left_takes_the_cores_of_those_finished(root, monkeypatch):
    shutil.copytree(root / "campaign" / "tiny", root / "campaign" / "other")
    (root / "campaign" / "other" / "config.toml").write_text(
        (root / "campaign" / "tiny" / "config.toml").read_text().replace("runs/campaign/tiny", "runs/campaign/other")
        .replace("iterations = 80", "iterations = 100000"))  # still training when it is stopped below
    monkeypatch.setattr(campaign, "cores", lambda: 5)
    assert campaign.threads_per_run(root, doublings=0) == 2  # both have work left: the cores shared, rounded down
    train(load_config(root / "campaign" / "tiny" / "config.toml", {"out": str(root / "runs" / "campaign" / "tiny")}),
          progress=False)
    assert campaign.finished(root, "tiny", doublings=0) and not campaign.finished(root, "other", doublings=0)
    assert campaign.threads_per_run(root, doublings=0) == 5
    assert not campaign.finished(root, "tiny", doublings=1)  # its last milestone is not cooled down yet
    monkeypatch.setattr(campaign, "cores", lambda: 1)
    assert campaign.threads_per_run(root, doublings=1) == 1

    # status points at a running process that started with fewer threads than it may now take
    monkeypatch.setattr(campaign, "cores", lambda: 5)
    monkeypatch.setattr(campaign, "finished", lambda root, name, *args: name == "tiny")  # as with doublings=0
    assert "started at iteration 0 (3 threads," in campaign.start(root, ["other"], doublings=0, threads=3)[0]
    assert campaign.running_threads(root, "other") == 3 and campaign.running_threads(root, "tiny") is None
    assert campaign.status(root)[-1].startswith("other runs on 3 threads of the 5 it may take")
    assert campaign.stop(root, ["other"])[0] == "other: stopped"


def test_start_refuses_fewer_than_one_thread(capsys):
    with pytest.raises(SystemExit) as e:
        campaign.main(["start", "--threads", "0"])
    assert e.value.code == 2 and "--threads must be at least 1, not 0" in capsys.readouterr().err


def test_targets_measure_the_issues_four_conditions():
    t = targets  # campaign/targets.py

    def masked(ds, c):
        return {"gaussian:15": 31.0, "poisson:3": 27.5, "speckle:0.04": 29.0, "real": 37.0}[c]

    def baseline(ds, c):
        return {"gaussian:15": 33.0, "poisson:3": 26.0, "speckle:0.04": 28.5, "real": 37.5}[c]

    records = _records("m", masked) + _records("b", baseline) + _records("noisy", lambda ds, c: 36.0)
    rows = t.targets(records + records[:3], "m", "b", paper={"poisson:3": 26.95, "speckle:0.04": 29.05})
    assert [r["dataset"] for r in rows] == ["Kodak24", "CBSD68", "Kodak24", "CBSD68", "Kodak24", "PolyU"]
    assert rows[0]["measured"] == pytest.approx(1.0) and rows[0]["met"]  # (1.5 + 0.5) / 2 out of distribution
    assert rows[1]["measured"] == pytest.approx(1.5) and rows[1]["met"]
    assert rows[2]["measured"] == pytest.approx(-2.0) and rows[2]["met"] is False  # more than 1.5 dB lost on σ=15
    assert rows[4]["measured"] == pytest.approx(-0.05) and rows[4]["met"] is False and "worst speckle:0.04" in rows[4]["detail"]
    assert "1 of 2 conditions" in rows[4]["detail"] and "ours on 2 images, the paper's on 24" in rows[4]["detail"]
    # records on every image the paper averages measure target 3 alone, not mixed with the grid's
    full = [{**r, "image": i, "psnr": 27.0} for r in records if r["method"] == "m" and r["dataset"] == "Kodak24"
            and r["noise"] == "poisson" and r["image"] == "a" for i in ("a", "b", "c")]
    on_all = t.targets(records, "m", "b", paper={"poisson:3": 26.95, "speckle:0.04": 29.05}, paper_records=full)
    assert on_all[4]["measured"] == pytest.approx(0.05) and on_all[4]["met"]
    assert "1 of 1 conditions" in on_all[4]["detail"] and "ours on 3 images" in on_all[4]["detail"]
    assert (on_all[4]["images"], rows[4]["images"]) == (3, 2)
    assert on_all[:4] == rows[:4] and on_all[5] == rows[5]  # the other targets stay on the grid
    assert t.targets(records, "m", "b", paper={"poisson:3": 26.95}, paper_records=[])[4] == t.targets(
        records, "m", "b", paper={"poisson:3": 26.95})[4]  # none there: the grid's, as before
    assert rows[5]["measured"] == pytest.approx(1.0) and rows[5]["met"]
    assert "| 4. masked − noisy input | PolyU | +1.00 | ≥ +0.00 | yes |" in t.markdown(rows)
    assert t.scores(records, "m") == {"Kodak24 out of distribution": pytest.approx(28.25),  # (27.5 + 29) / 2
                                      "CBSD68 out of distribution": 27.5, "Kodak24 gaussian:15": 31.0,
                                      "CBSD68 gaussian:15": 31.0, "PolyU": 37.0}
    assert t.scores([r for r in records if r["dataset"] != "PolyU"], "b")["PolyU"] is None
    table = t.progress_markdown([("m", 800, t.scores(records, "m")), ("b", 800, t.scores(records, "b")),
                                 ("m", 1600, t.scores(records, "b"))])
    assert "| `m` | 800 | 28.25 | 27.50 | 31.00 | 31.00 | 37.00 |" in table  # a run's first row: no change
    assert "| `m` | 1,600 | 27.25 (-1.00) | 26.00 (-1.50) | 33.00 (+2.00) | 33.00 (+2.00) | 37.50 (+0.50) |" in table
    # a model with fewer images of a condition is not compared there
    fewer = [r for r in records if not (r["method"] == "m" and r["dataset"] == "CBSD68" and r["image"] == "b")]
    rows = t.targets(fewer, "m", "b", paper={})
    assert rows[1]["measured"] is None and rows[1]["met"] is None and rows[4]["measured"] is None


def _benchmarked_pair(root, patches: int, masked_psnr: float) -> list[dict]:
    """Cool-down records of ``masked`` and ``baseline`` at ``patches``, benchmarked (every condition: the
    masked model at ``masked_psnr``, the baseline at 29 dB, the noisy input at 25), their records kept
    in campaign/bench/ as the runs' processes keep them."""
    from maskdn.generalization import _write_results  # noqa: PLC2701 (a results.json as maskdn bench writes it)

    bench = root / "campaign" / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    cds = []
    for name, psnr in (("masked", masked_psnr), ("baseline", 29.0)):
        recs = _records(f"{name}-{patches}", lambda ds, c: psnr) + _records("noisy", lambda ds, c: 25.0)
        for part in ("grid", "polyu"):
            local = root / f"{name}-{part}.json"
            _write_results(local, [r for r in recs if (r["dataset"] == "PolyU") == (part == "polyu")])
            campaign._keep_records(local, bench / f"{name}-{patches}-{part}.json.gz")
        cds.append({"run": name, "iteration": patches // 16, "patches": patches, "cooldown": 100,
                    "weights": f"campaign/cooldowns/{name}-{patches}.safetensors",
                    "bench": {p: f"campaign/bench/{name}-{patches}-{p}.json.gz" for p in ("grid", "polyu")}})
    return cds


def test_the_targets_block_compares_the_pair_at_equal_patches(root, monkeypatch):
    cds = _benchmarked_pair(root, 800, 30.0)
    campaign._write_cooldowns(root, cds[:1])
    assert "at 800 patches" not in writeup.targets_text(root)  # one of the pair only
    assert writeup.plot_bench(root, root / "bench.png") is None and not (root / "bench.png").exists()
    campaign._write_cooldowns(root, cds)
    text = writeup.targets_text(root)
    assert "The campaign at 800 patches (`masked-800` against `baseline-800`" in text
    assert "| 1. masked − baseline, mean out of distribution | Kodak24 | +1.00 | ≥ +1.00 | yes |" in text
    (root / "docs").mkdir()
    (root / "docs" / "training.md").write_text(f"x\n{writeup.TARGETS_BEGIN}\nold\n{writeup.TARGETS_END}\ny\n")
    writeup.write_readme(root)
    assert (root / "docs" / "training.md").read_text() == f"x\n{writeup.TARGETS_BEGIN}\n{text}\n{writeup.TARGETS_END}\ny\n"
    assert "What the benchmarked pairs predict" not in text  # one pair: no line yet
    t = targets
    gaps = t.differences(writeup.bench_records(root, cds[0]) + writeup.bench_records(root, cds[1]), "masked-800", "baseline-800")
    assert set(gaps) == {("Kodak24", "gaussian:15"), ("Kodak24", "poisson:3"), ("Kodak24", "speckle:0.04"),
                         ("CBSD68", "gaussian:15"), ("CBSD68", "poisson:3"), ("PolyU", "real")}
    assert all(v == pytest.approx(1.0) for v in gaps.values())  # what the figure draws, per condition
    assert writeup.plot_bench(root, root / "new" / "bench.png").stat().st_size > 0  # its folder made; masked − baseline per condition
    assert "Each run's own benchmark" not in text  # nor a run's progress

    # a second pair, masking further ahead: the targets' lines through both, extended to the runs' length
    campaign._write_cooldowns(root, cds + _benchmarked_pair(root, 1600, 30.5))
    monkeypatch.setattr(campaign, "run_names", lambda root: ["baseline", "masked"])
    monkeypatch.setattr(writeup, "forecast_patches", lambda root: 6400)
    text = writeup.targets_text(root)
    assert "What the benchmarked pairs predict at the runs' length, 6,400 patches" in text
    # +1.00 at 800, +1.50 at 1,600: +0.5 per doubling, two doublings on
    assert "| 1. masked − baseline, mean out of distribution | Kodak24 | +1.00 (800), +1.50 (1,600) | +0.50 | +2.50 | ≥ +1.00 | yes |" in text
    assert "| 4. masked − noisy input | PolyU | +5.00 (800), +5.50 (1,600) | +0.50 | +6.50 | ≥ +0.00 | yes |" in text
    # each run's own scores from one benchmarked cool-down to the next, before the targets' trends
    assert text.index("Each run's own benchmark") < text.index("What the benchmarked pairs predict")
    assert "| `masked` | 1,600 | 30.50 (+0.50) | 30.50 (+0.50) | 30.50 (+0.50) | 30.50 (+0.50) | 30.50 (+0.50) |" in text
    assert "| `baseline` | 1,600 | 29.00 (+0.00) |" in text


def test_target_trends_extend_each_target_through_the_pairs():
    f = forecast

    def rows(ood, g15):
        return [{"target": "ood", "dataset": "K", "measured": ood, "threshold": 1.0},
                {"target": "g15", "dataset": "K", "measured": g15, "threshold": -1.5}]

    trends = f.target_trends({125000: rows(0.1, -1.0), 250000: rows(0.3, None), 500000: rows(0.5, -0.9)}, 1000000)
    ood, g15 = trends
    assert (ood["slope"], ood["predicted"], ood["met"]) == (pytest.approx(0.2), pytest.approx(0.7), False)
    assert g15["points"] == [(125000, -1.0), (500000, -0.9)] and g15["predicted"] == pytest.approx(-0.85) and g15["met"]
    assert f.target_trends({125000: rows(0.1, -1.0)}, 1000000) == []  # one pair: no line
    # a target averaged over other images at some pairs (a benchmark part still to run there): not on its line
    on = {125000: [{**rows(0.1, -1.0)[0], "images": 24}], 250000: [{**rows(0.3, -1.0)[0], "images": 16}],
          500000: [{**rows(0.5, -1.0)[0], "images": 24}]}
    assert f.target_trends(on, 1000000)[0]["points"] == [(125000, 0.1), (500000, 0.5)]
    on[500000][0]["images"] = 16
    assert f.target_trends(on, 1000000)[0]["points"] == [(250000, 0.3), (500000, 0.5)]
    assert "| ood | K | +0.10 (125,000), +0.30 (250,000), +0.50 (500,000) | +0.20 | +0.70 | ≥ +1.00 | **no** |" in \
        f.target_markdown(trends, 1000000)


def test_pair_table_compares_validation_at_equal_patches(root, monkeypatch):
    hist = {"masked": [{"patches": 100, "psnr": {"g": 30.0, "p": 25.0}}, {"patches": 200, "psnr": {"g": 31.0, "p": 26.0}},
                       {"patches": 300, "psnr": {"g": 31.5, "p": 26.5}}],
            "baseline": [{"patches": 100, "psnr": {"g": 31.0, "p": 24.5}}, {"patches": 200, "psnr": {"g": 31.5, "p": 25.0}}]}
    monkeypatch.setattr(campaign, "history", lambda root, name: ({}, hist[name]))
    text = writeup.pair_table(root)
    assert text.splitlines()[2:] == ["| patches | g | p |", "|---|---|---|", "| 100 | -1.00 | +0.50 |", "| 200 | -0.50 | +1.00 |"]
    hist["baseline"] = []
    assert writeup.pair_table(root) == ""


def test_training_time_is_split_by_device_once_a_run_has_trained_on_two():
    assert campaign.training_time({"elapsed": 7200.0, "device_time": {"cpu": 7200.0}}) == "2.0 h"
    assert campaign.training_time({"elapsed": 7200.0}) == "2.0 h"
    assert campaign.training_time({"elapsed": 9000.0, "device_time": {"cuda": 1800.0, "cpu": 7200.0}}) == \
        "2.5 h (CPU 2.0 h, CUDA 30 min)"
    assert campaign.training_time({"elapsed": 7230.0, "device_time": {"cuda": 30.0, "cpu": 7200.0}}) == "2.0 h"  # a mere resume


def test_recent_rate_reads_the_runs_log(root):
    log = root / "runs" / "campaign" / "tiny" / "log.csv"
    log.parent.mkdir(parents=True)
    rows = [(i * 50, i * 800, i * 100.0) for i in range(1, 41)]  # 8 patches/s, 100 s per row
    log.write_text("iteration,lr,loss,patches,elapsed_s\n" + "".join(f"{i},0,0,{p},{e}\n" for i, p, e in rows))
    assert campaign.recent_rate(root, "tiny") == pytest.approx(8.0)
    assert campaign.recent_rate(root, "tiny", window_s=0) == pytest.approx(8.0)  # the last two rows at least


def test_a_stop_asked_for_between_phases_is_honoured_and_a_dead_run_is_reported(root):
    campaign.stop_file(root, "tiny").parent.mkdir(parents=True)
    campaign.stop_file(root, "tiny").touch()  # as stop() leaves it when the signal came as a phase ended
    assert campaign.run(root, "tiny", doublings=2) == "tiny: stopped"
    assert campaign.phase_file(root, "tiny").read_text() == "stopped\n"
    assert not (root / "runs" / "campaign" / "tiny" / "state.pt").exists()  # nothing was trained
    assert "tiny: stopped," in campaign.status(root)[0]
    campaign.phase_file(root, "tiny").write_text("training to iteration 40\n")  # a process that died mid-phase
    assert "it died; see" in campaign.status(root)[0]


def test_extend_checks_before_it_writes(root):
    from maskdn.errors import MaskdnError

    config = (root / "campaign" / "tiny" / "config.toml").read_text()
    with pytest.raises(MaskdnError, match="iterations must be above the run's 0 done, not -3"):
        campaign.extend(root, "tiny", -3)
    with pytest.raises(MaskdnError, match=r"no campaign run 'nosuch' \(runs: tiny\)"):
        campaign.extend(root, "nosuch", 100)
    assert (root / "campaign" / "tiny" / "config.toml").read_text() == config


def test_targets_name_the_methods_there_when_one_is_missing():
    from maskdn.errors import MaskdnError

    records = _records("m", lambda ds, c: 30.0) + _records("noisy", lambda ds, c: 25.0)
    with pytest.raises(MaskdnError, match=r"no one-pass records of 'b' \(methods there: m, noisy\)"):
        targets.targets(records, "m", "b")


def _forecast_module():
    return forecast  # campaign/forecast.py


def test_forecast_extends_each_runs_log_trend_over_its_recent_windows():
    f = _forecast_module()

    def curve(k):  # PSNR after 1k·2^k patches: 0.5 dB per doubling up to 64k patches (k = 6), then 0.2: it flattens
        return 20 + 0.5 * min(k, 6) + 0.2 * max(k - 6, 0)

    dense = [(round(1000 * 2 ** (k / 2)), curve(k / 2)) for k in range(17)]  # 1k … 256k, every half doubling
    assert f.trend(dense, 2.0)[2] == 3  # the last doubling: 128k, 181k, 256k
    slope, at_newest, used = f.trend(dense, 4.0)  # 64k … 256k: the flatter segment, exactly
    assert (slope, at_newest, used) == (pytest.approx(0.2, abs=1e-4), pytest.approx(23.4), 5)
    assert f.predict(dense, 1024000, 4.0) == pytest.approx(23.8)  # two doublings on
    assert f.trend(dense, 64.0)[0] > 0.2  # a wider window reaches into the steeper part
    assert f.trend(dense[:2], 4.0) is None and f.predict([], 10, 2.0) is None


def test_forecast_reports_each_noise_and_the_unseen_mean_as_a_range_over_windows():
    f = _forecast_module()


    def hist(g, p, until):  # a straight line per noise in log2(patches): slopes g and p dB per doubling
        return [{"patches": round(1000 * 2 ** (k / 2)), "psnr": {"gaussian:15": 30 + g * k / 2, "poisson:3": 25 + p * k / 2}}
                for k in range(until)]

    rows = f.forecast({"m": hist(0.5, 0.1, 9), "b": hist(0.25, -0.3, 7)}, "m", "b", 64000)
    assert [r["noise"] for r in rows] == ["gaussian:15", "poisson:3", "unseen mean"]
    g, p, mean = rows
    # m is at 16k (k = 8), b at 8k (k = 6); 64k is 2 and 3 doublings on; both windows agree on a line
    assert g["predicted"]["m"] == (pytest.approx(33.0, abs=1e-3), pytest.approx(33.0, abs=1e-3))
    assert g["predicted"]["b"] == (pytest.approx(31.5, abs=1e-3), pytest.approx(31.5, abs=1e-3))
    assert p["slope"]["b"] == (pytest.approx(-0.3, abs=1e-3), pytest.approx(-0.3, abs=1e-3))
    assert p["gap"] == (pytest.approx(25.6 - 23.2, abs=1e-3), pytest.approx(25.6 - 23.2, abs=1e-3))
    assert p["gap_now"] == (8000, pytest.approx(0.3 + 0.9, abs=1e-3))  # the newest patches both runs have
    assert mean["gap"] == p["gap"] and mean["gap_now"] == p["gap_now"]  # poisson is the only unseen noise
    text = f.markdown(rows, "m", "b", 64000)
    assert "| poisson:3 | 25.40 (16,000) | +0.10 | 25.60 | 24.10 (8,000) | -0.30 | 23.20 | +1.20 (8,000) | +2.40 |" in text
    rows = f.forecast({"m": hist(0.5, 0.1, 9), "b": hist(0.25, -0.3, 2)}, "m", "b", 64000)  # too few baseline points
    assert rows[1]["predicted"]["b"] is None and rows[1]["gap"] is None and "| – |" in f.markdown(rows, "m", "b", 64000)


def test_backtest_measures_the_forecasts_miss_one_doubling_back():
    f = _forecast_module()

    def hist(bend):  # 0.5 dB per doubling up to 16k patches (k = 8), then 0.5 + bend: the curve turns
        return [{"patches": round(1000 * 2 ** (k / 2)),
                 "psnr": {"gaussian:15": 30 + 0.5 * k / 2 + bend * max(k / 2 - 4, 0)}} for k in range(13)]

    rows = f.backtest({"straight": hist(0.0), "turns": hist(-0.3)})
    straight, turns = rows[0]["runs"]["straight"], rows[0]["runs"]["turns"]
    assert (straight["from"], straight["at"]) == (32000, 64000)  # the newest point, and the last at or below its half
    assert straight["error"] == (pytest.approx(0.0, abs=1e-3), pytest.approx(0.0, abs=1e-3))  # a line is foreseen
    # the turn at 16k: the last doubling before 32k is already on the flatter line (0.2 per doubling), exact;
    # the last two reach back to the steeper part and overshoot
    lo, hi = turns["error"]
    assert lo == pytest.approx(0.0, abs=1e-3) and hi > 0.05
    text = f.backtest_markdown(rows, ["straight", "turns"])
    assert "| noise | `straight` (32,000 → 64,000) | `turns` (32,000 → 64,000) |" in text
    assert "| gaussian:15 | +0.00 | +0.00 to +" in text
    assert f.backtest({"short": hist(0.0)[:3]})[0]["runs"]["short"]["error"] is None  # too few points to fit


def test_the_campaign_readme_and_figure_carry_the_forecast(root, monkeypatch):
    hist = [{"patches": 100 * k, "psnr": {"gaussian:15": 30 + k / 10, "poisson:3": 25 - k / 10}} for k in range(1, 9)]
    monkeypatch.setattr(campaign, "PAIR", ("tiny", "tiny"))
    monkeypatch.setattr(campaign, "history", lambda root, name: ({"iteration": 400, "elapsed": 1.0, "batch_size": 2}, hist))
    writeup.write_readme(root)
    readme = (root / "campaign" / "README.md").read_text()
    assert "What the validation curves predict at the runs' length, 160 patches" not in readme  # 800 already seen
    campaign.extend(root, "tiny", 3200)
    writeup.write_readme(root)
    readme = (root / "campaign" / "README.md").read_text()
    assert "What the validation curves predict at the runs' length, 6,400 patches" in readme
    assert "| unseen mean |" in readme and readme.endswith("end\n")
    assert "The same fits made one doubling ago" in readme and "| poisson:3 | +0.21 to +0.28 |" in readme
    assert writeup.plot(root, root / "c.png").stat().st_size > 0


def test_a_state_from_a_gpu_session_cools_down_on_this_machine(root):
    """A GPU session's state records device = "cuda" and its own data workers; the cool-down branch a CPU
    process makes of it at a milestone runs with the run's config.toml settings instead."""
    from maskdn.train.checkpoint import save_state

    cfg = load_config(root / "campaign" / "tiny" / "config.toml", {"out": str(root / "runs" / "campaign" / "tiny"), "iterations": 40})
    train(cfg, progress=False)
    path = root / "runs" / "campaign" / "tiny" / "state.pt"
    state = load_state(path)
    state["config"] |= {"device": "cuda", "workers": 8, "out": "/tmp/maskdn-gpu-x/tiny"}
    save_state(path, state)
    assert "cool-down of 3 iterations from iteration 40" in campaign.cooldown(root, "tiny", 3)
    branch = load_state(root / "runs" / "campaign" / "tiny-cd-40" / "state.pt")
    assert (branch["iteration"], branch["config"]["device"], branch["config"]["workers"]) == (43, "cpu", 0)


def test_a_cooldown_stopped_part_way_goes_on_from_its_committed_state_on_a_new_machine(root):
    """A session can end during a milestone's cool-down: ``save`` commits the branch's newest state, and
    another machine goes on from it (not from the milestone) to the weights of one uninterrupted cool-down;
    once the cool-down is recorded its committed state goes."""
    from maskdn.train import TrainingStopped
    from maskdn.train import cooldown as branch

    out = root / "runs" / "campaign" / "tiny"
    train(load_config(root / "campaign" / "tiny" / "config.toml", {"out": str(out), "iterations": 40}), progress=False)
    straight = branch(out, 5, root / "straight-cd", progress=False)  # the reference: one uninterrupted cool-down
    dest = campaign.branch_dir(root, "tiny", 40)
    with pytest.raises(TrainingStopped):  # stops after its first iteration, as a SIGTERM there would
        branch(out, 5, dest, progress=False, time_limit=1e-9)
    lines = campaign.save(root)
    assert lines[0] == "tiny: saved its cool-down from iteration 40 at iteration 41 of 45"
    assert lines[1].startswith("tiny: saved iteration 40 (")
    part_way = root / "campaign" / "tiny" / "cooldown.pt"
    assert load_state(part_way)["iteration"] == 41
    assert "its cool-down from iteration 40 is at 41 of 45 (committed)" in "\n".join(campaign.status(root))
    assert not any("cool-down" in line for line in campaign.save(root))  # nothing newer to save

    shutil.rmtree(root / "runs")  # a new machine
    assert "cool-down of 5 iterations from iteration 40" in campaign.cooldown(root, "tiny", 5)
    rows = (dest / "log.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [42, 43, 44, 45]  # went on from 41, did not start again at 40
    a, b = load_state(straight.parent / "state.pt"), load_state(dest / "state.pt")
    assert all(torch.equal(a["ema"]["module"][k], b["ema"]["module"][k]) for k in a["ema"]["module"])
    assert campaign.read_cooldowns(root)[0]["iteration"] == 40 and "its cool-down from" not in "\n".join(campaign.status(root))
    assert campaign.save(root)[0] == "tiny: its cool-down from iteration 40 is recorded; removed campaign/tiny/cooldown.pt"
    assert not part_way.exists()
