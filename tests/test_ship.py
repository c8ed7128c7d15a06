"""Shipping a campaign pair (campaign/ship.py): the cool-downs of masked and baseline at one milestone
go into the zoo with their full-set scores, their benchmark records join the README's under the zoo
names (replacing the pair shipped before), and the figures, ranking and README blocks are remade."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REPO, campaign_script
from test_train import make_images

from maskdn import zoo
from maskdn.errors import MaskdnError
from maskdn.generalization import read_records, run_bench
from maskdn.io import write_image
from maskdn.model import MaskedSwinIR, preset
from maskdn.weights import read_metadata, save_model

ship = campaign_script("ship")
campaign, writeup = ship.campaign, ship.writeup

PLAN = (campaign.Part("grid", ("Kodak24", "CBSD68"), 2), campaign.Part("polyu", ("PolyU",), None),
        campaign.Part("paper", ("Kodak24",), None, lambda: ["poisson:3"], readme=False))  # target 3's, on all 3 images
NOISES = ["gaussian:15", "poisson:3"]
NAMES = {"masked": "masked-160", "baseline": "baseline-160"}


def _model(path, masked: bool, seed: int, patches: int):
    torch.manual_seed(seed)
    model = MaskedSwinIR(preset("tiny", attn_mask_ratio=0.75 if masked else 0.0))
    save_model(model, path, training={"preset": "tiny", "patches_seen": patches, "patch_size": 16,
                                      **({"input_mask": [0.0, 0.9]} if masked else {})})


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository whose campaign has benchmarked cool-down pairs at 80 and 160 patches, and whose
    README benchmark holds ``noisy`` and one bundled model, ``old``."""
    data = tmp_path / "data"
    make_images(data / "CBSD432", sizes=((24, 24),))
    make_images(data / "Kodak24", sizes=((24, 24), (20, 28), (16, 24)), seed=1)  # 3 images; the grid takes 2
    make_images(data / "CBSD68", sizes=((24, 24), (20, 28)), seed=2)
    rng = np.random.default_rng(3)
    (data / "PolyU").mkdir()
    for i in range(2):
        mean = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        write_image(data / "PolyU" / f"cam_{i}_mean.png", mean)
        write_image(data / "PolyU" / f"cam_{i}_real.png", np.clip(mean + rng.normal(0, 8, mean.shape), 0, 255).astype(np.uint8))
    root = tmp_path / "repo"
    monkeypatch.chdir(tmp_path)
    records = []
    for run in campaign.PAIR:
        (root / "campaign" / run).mkdir(parents=True)
        (root / "campaign" / run / "config.toml").write_text(f'data = "{data / "CBSD432"}"\nout = "runs/campaign/{run}"\n'
                                                             'preset = "tiny"\nschedule = "wsd"\n')
        for it, seed in ((40, 1), (80, 2)):
            weights = root / "campaign" / "cooldowns" / f"{run}-{it * 2}.safetensors"
            weights.parent.mkdir(exist_ok=True)
            _model(weights, run == "masked", seed, it * 2 + 8)
            records.append({"run": run, "iteration": it, "patches": it * 2, "cooldown": 4, "val_psnr": {},
                            "weights": str(weights.relative_to(root))})
    campaign._write_cooldowns(root, records)
    for record in records:
        campaign.bench(root, record, PLAN, NOISES)
    weights, docs = ship.zoo_dir(root), ship.docs_bench(root)
    weights.mkdir(parents=True)
    docs.mkdir(parents=True)
    _model(weights / "old.safetensors", False, 0, 100)
    for part in PLAN[:2]:  # the README's benchmark before the ship
        got = run_bench([data / d for d in part.datasets], ["noisy", str(weights / "old.safetensors")], NOISES, None,
                        passes=1, limit=part.limit, progress=False, reports=False, lpips=False)
        campaign.write_records(docs / f"results-{part.name}.json.gz", got)
    (root / "README.md").write_text("# t\n<!-- generated: kodak24 -->\n<!-- end: kodak24 -->\n"
                                    "<!-- generated: commands -->\n<!-- end: commands -->\n"
                                    "<!-- generated: reported -->\n<!-- end: reported -->\n")
    (root / "docs" / "training.md").write_text(f"# t\n{writeup.TARGETS_BEGIN}\n{writeup.TARGETS_END}\n")
    monkeypatch.setattr(zoo, "zoo_dir", lambda: ship.zoo_dir(root))  # maskdn "installed from" this repository
    return root


def _methods(root, part):
    return sorted({r["method"] for r in read_records(ship.docs_bench(root) / f"results-{part}.json.gz")})


def _text(root, *parts):
    return root.joinpath(*parts).read_text()


def test_a_pair_is_shipped_then_replaced_by_the_next(repo):
    lines = ship.ship(repo, 80, plan=PLAN, noises=NOISES, evaluate_noises=["gaussian:15"])
    zoo_dir = ship.zoo_dir(repo)
    assert sorted(p.stem for p in zoo_dir.glob("*.safetensors")) == ["baseline-80", "masked-80", "old"]
    scores = read_metadata(zoo_dir / "masked-80.safetensors")["training"]["scores"]
    assert set(scores) == {"Kodak24", "CBSD68", "PolyU"} and set(scores["Kodak24"]) == {"gaussian:15"}
    assert set(scores["PolyU"]) == {"real"}
    assert _methods(repo, "grid") == _methods(repo, "polyu") == ["baseline-80", "masked-80", "noisy", "old"]
    grid = read_records(ship.docs_bench(repo) / "results-grid.json.gz")
    assert len([r for r in grid if r["method"] == "masked-80"]) == 2 * 2 * len(NOISES)  # datasets × images × noises
    kept = campaign._load_results(repo / "campaign" / "bench" / "masked-80-grid.json.gz")
    assert sorted(r["psnr"] for r in grid if r["method"] == "masked-80") == sorted(
        r["psnr"] for r in kept if r["method"] == "masked-80")  # the campaign's records, renamed, not recomputed
    readme = _text(repo, "README.md")
    assert "| masked-80 |" in readme
    assert ("maskdn bench --data Kodak24/ CBSD68/ --model baseline-80 masked-80 old --method noisy --passes 1 --limit 2 "
            "--jobs 2 --out bench-grid/") in readme
    assert "| condition | IDF, reported | `idf-g15`, ours | masked SwinIR, reported (Kodak24) | `masked-80`, ours |" in readme
    training = _text(repo, "docs", "training.md")
    assert "The shipped pair (`masked-80` against `baseline-80`, 88 patches of 16²" in training
    # target 3 of each campaign pair on the paper part's 3 Kodak24 images; the README's grid has 2
    paper = campaign_script("targets").paper_masked()["poisson:3"]
    for patches in (80, 160):  # each pair's count, from its paper part's records against the paper's value
        kept = campaign._load_results(repo / "campaign" / "bench" / f"masked-{patches}-paper.json.gz")
        mean = np.mean([r["psnr"] for r in kept if r["method"] == f"masked-{patches}" and r["noise"] == "poisson"])
        pair = training.split(f"patches (`masked-{patches}` against")[1].split("| 4. ")[0]
        assert f"{int(mean >= paper)} of 1 conditions at or above; mean {mean - paper:+.2f}" in pair
    assert training.count("ours on 3 images, the paper's on 24") == 2  # the pairs at 80 and 160 patches
    assert not (ship.docs_bench(repo) / "results-paper.json.gz").exists()  # not the README's benchmark
    records, m, _ = writeup.pair_records(repo, writeup.benchmarked(repo)[160])  # targets 1, 2, 4 and the tables'
    assert len({r["image"] for r in records if r["dataset"] == "Kodak24" and r["method"] == m}) == 2  # the grid's
    assert "masked-80" in _text(repo, "docs", "bench", "summary-kodak24-cbsd68.md")
    for name in ("curves.png", "gallery.jpg", "summary-polyu.md"):
        assert (ship.docs_bench(repo) / name).stat().st_size > 0
    ranking = json.loads(_text(repo, "docs", "bench", "ranking.json"))
    assert ranking["results"] == ["docs/bench/results-grid.json.gz", "docs/bench/results-polyu.json.gz"]
    top = next(r["method"] for r in ranking["ranking"] if r["method"] != "noisy")  # the best bundled model
    assert {r["method"] for r in ranking["ranking"]} == {"baseline-80", "masked-80", "noisy", "old"}
    assert f"the default model is {top}; set DEFAULT_MODEL = {top!r} in src/maskdn/zoo.py" in "\n".join(lines)
    assert {(r["run"], r.get("zoo")) for r in campaign.read_cooldowns(repo) if r["patches"] == 80} == {
        ("masked", "masked-80"), ("baseline", "baseline-80")}

    lines = ship.ship(repo, 160, plan=PLAN, noises=NOISES, evaluate_noises=["gaussian:15"])
    assert sorted(p.stem for p in zoo_dir.glob("*.safetensors")) == ["baseline-160", "masked-160", "old"]
    assert "removed masked-80, the campaign pair shipped before, from the zoo and the records" in lines
    assert _methods(repo, "grid") == ["baseline-160", "masked-160", "noisy", "old"]
    assert [r.get("zoo") for r in campaign.read_cooldowns(repo) if r.get("zoo")] == ["masked-160", "baseline-160"]
    for path in (("README.md",), ("docs", "bench", "summary-kodak24-cbsd68.md"), ("docs", "bench", "summary-polyu.md")):
        assert "masked-80" not in _text(repo, *path) and "masked-160" in _text(repo, *path), path
    assert "The shipped pair (`masked-160` against `baseline-160`, 168 patches" in _text(repo, "docs", "training.md")

    # again: nothing to score, and the records are rewritten byte for byte the same
    before = (ship.docs_bench(repo) / "results-grid.json.gz").read_bytes()
    lines = ship.ship(repo, 160, plan=PLAN, noises=NOISES, evaluate_noises=["gaussian:15"])
    assert [line for line in lines if "already scored" in line] == [
        "masked-160.safetensors: already scored from campaign/cooldowns/masked-160.safetensors",
        "baseline-160.safetensors: already scored from campaign/cooldowns/baseline-160.safetensors"]
    assert (ship.docs_bench(repo) / "results-grid.json.gz").read_bytes() == before


def test_a_ship_that_fails_late_changes_nothing(repo, monkeypatch):
    docs = {p.name: p.read_bytes() for p in ship.docs_bench(repo).iterdir()}
    cooldowns, readme = _text(repo, "campaign", "cooldowns.json"), _text(repo, "README.md")

    def fail(*args, **kwargs):
        raise MaskdnError("the figures could not be drawn")

    monkeypatch.setattr(ship, "redraw", fail)
    with pytest.raises(MaskdnError, match="the figures could not be drawn"):
        ship.ship(repo, 80, plan=PLAN, noises=NOISES, evaluate_noises=["gaussian:15"])
    assert sorted(p.name for p in ship.zoo_dir(repo).iterdir()) == ["old.safetensors"]
    assert {p.name: p.read_bytes() for p in ship.docs_bench(repo).iterdir()} == docs
    assert _text(repo, "campaign", "cooldowns.json") == cooldowns and _text(repo, "README.md") == readme


def test_a_pair_that_is_not_there_or_not_comparable_is_refused(repo, monkeypatch):
    with pytest.raises(MaskdnError, match=r"masked has no cool-down at 999 patches \(its cool-downs: 80, 160\)"):
        ship.ship(repo, 999, plan=PLAN, noises=NOISES)
    records = campaign.read_cooldowns(repo)
    records[0]["bench"].pop("polyu")
    records[0]["bench"].pop("paper")  # the targets' part must be done too, though it joins no README table
    campaign._write_cooldowns(repo, records)
    with pytest.raises(MaskdnError, match=r"masked's cool-down at 80 patches is not benchmarked yet \(polyu, paper to run"):
        ship.ship(repo, 80, plan=PLAN, noises=NOISES)
    (repo / "campaign" / "bench" / "baseline-160-grid.json.gz").unlink()
    with pytest.raises(MaskdnError, match="baseline-160-grid.json.gz"):
        ship.ship(repo, 160, plan=PLAN, noises=NOISES)
    # the README's benchmark on other images: the pair's records cannot fill its tables
    path = ship.docs_bench(repo) / "results-grid.json.gz"
    grid = read_records(path)
    campaign.write_records(path, [r for r in grid if r["image"] != "0"])
    records = campaign.read_cooldowns(repo)
    with pytest.raises(MaskdnError, match="not in the README's benchmark"):
        ship.pair_records(repo, {r["run"]: r for r in records if r["patches"] == 160}, NAMES, "grid")
    # the README's noisy inputs made another way: not the same protocol
    grid[0]["psnr"] += 1.0
    campaign.write_records(path, grid)
    with pytest.raises(MaskdnError, match="not the README's protocol"):
        ship.pair_records(repo, {r["run"]: r for r in records if r["patches"] == 160}, NAMES, "grid")
    # maskdn installed from another checkout: its zoo is not the one shipped into
    monkeypatch.setattr(zoo, "zoo_dir", lambda: REPO / "src" / "maskdn" / "weights")
    with pytest.raises(MaskdnError, match="maskdn is installed from .*, not from"):
        ship.ship(repo, 160, plan=PLAN, noises=NOISES)
    assert sorted(p.stem for p in ship.zoo_dir(repo).glob("*.safetensors")) == ["old"]
    assert _methods(repo, "grid") == ["noisy", "old"]


def test_the_command_refuses_in_one_line(capsys):
    assert ship.main(["5", "--jobs", "0"]) == 1
    assert capsys.readouterr().err == "ship: error: --jobs must be an integer >= 1, not 0\n"
