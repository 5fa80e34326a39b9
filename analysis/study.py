"""`python -m analysis.study [--scale cpu|gpu|tiny] --data-dir ../shared/data`: the headline study.

One command per scale runs, for each part of the study (CIFAR-100 backbones x every head; a
Fashion-MNIST check), the search (fixed seed, per-pair budgets) -> `analysis.retrain` (3 seeds,
each model evaluated once on the test set) -> the budget curve (softmax's best at other epochs) -> the
converge stage (every retrained run again at the budget the curve picked, softmax at twice it) -> the
borrowed runs (a head trained with softmax's searched config, as the seed reports did) -> the
same at a longer budget beside softmax's config there -> `analysis.report`, then
`tools.heads_bench` for the heads' measured cost at large C, and writes
`results/study-<scale>/`: `report.md` with its figures,
`trials.parquet`, `history.parquet`, `final.parquet`, `spec.json` (the scale, each part's experiment spec and the
wall time of every stage) and `command.txt`.

Each stage is a subprocess whose output goes to `<work>/study-<scale>/logs/`; a stage that ended
well is recorded in `results/study-<scale>/stages/stages.json` with its small outputs beside it
(committed), and skipped when the command is run again, here or on a fresh clone: a study that was
stopped (Ctrl-C, a crash, a lost machine) goes on where it was. An unfinished search resumes
(`--resume`); a retrain goes on per (config, seed) run, each finished run kept in its own file.

Scales:
- `cpu` (default; hours on 2 cores, run it again after a stop: it goes on from the committed
  stages): airnet_s x every head on CIFAR-100 (8 trials per pair on 10,000 training images,
  8 epochs, ASHA; then 3 seeds of each pair's best at 10 epochs on all 50,000), softmax's best
  at 5 and 20 epochs too (the budget curve), every pair's 3 seeds again at 20 epochs beside softmax at 40
  (the converge stage: 10 epochs had not converged; ~35 min a run on one core), and airnet_s + softmax on Fashion-MNIST; the seed
  reports' own CNNs searched here and trained at their budgets (cnn_base and cnn_keras with softmax
  and Gumbel at 50 epochs, cnn_vgg at 15 and 30; one seed each; cnn_base + Gumbel also with softmax's config,
  three seeds, at 50 and 80 epochs, beside that softmax config at 80); a ViT sized for this CPU (vit_cpu) x every
  head from scratch, one seed at 10 epochs; and whether the search pays (`Pays`:
  airnet_s + softmax searched by the recipe alone, random search + ASHA and TPE + ASHA at the same
  budget, two search seeds, each arm's best retrained with 3 seeds);
- `gpu`: resnet18, vit_tiny, efficientnet_b0 x every head, 30 epochs, 4 trials per pair packed four
  to a GPU (not run yet; about 4 hours on one H100 by an estimate);
- `tiny`: the smoke space on generated data (a minute or two): the test of this command.

`--report-only` writes results/study-<scale>/ from the stages done so far (a partial study).
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from common.cli import ArgumentParser, check_out_dir, guard
from tuning.results import Results, best, config_columns

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Part:
    """One experiment of the study: a search, its retrain and its report."""
    name: str
    search: tuple[str, ...]  # tuning.search arguments (space, dataset, --set overrides, budget)
    seeds: int = 3
    retrain_epochs: int | None = None  # the retrain's budget (default: the searched config's epochs)
    # softmax's best config trained once (seed 0) at each of these budgets too: with the retrain's budget, the
    # accuracy-vs-epochs curve that says whether that budget has converged
    curve: tuple[int, ...] = ()
    curve_arch: str | None = None  # whose softmax config the curve trains (default: the first retrained)
    # (arch, head) -> seeds: the head trained with that arch's searched softmax config at the retrain's budget,
    # the seed reports' protocol (one config for both heads), beside the head's own searched config
    borrow: dict = field(default_factory=dict)
    # longer budgets for the borrowed runs, each beside the arch's softmax config at the same budget (seed 0):
    # stage `longer`, both heads at equal epochs; the borrowed head's runs first, then softmax's
    longer: tuple[int, ...] = ()
    longer_cpus: float | None = None  # the longer stage's CPUs per run (default: the part's)
    # every retrained (config, seed) again at this budget, and softmax's config (seed 0) at twice it: stage
    # `converge`, the heads compared at the budget the curve picked, beside the point that says if it converged
    converge: int | None = None
    cpus_per_task: float | None = None  # the retrain's CPUs per run (default: the scale's)

    @property
    def dataset(self) -> str:
        """The dataset its search trains on (`--dataset`, cifar100 by default): parts on one dataset share
        the report's panels and the seed reports' rows."""
        args = list(self.search)
        return args[args.index("--dataset") + 1] if "--dataset" in args else "cifar100"


ARMS = (("recipe", ("--num-samples", "1")),  # the pair's first trial is its family's recipe: that one alone
        ("random", ("--set", "sampler=random")),  # random search + the same ASHA
        ("tpe", ()))  # headsweep's default: TPE after a random start-up, + ASHA


@dataclass(frozen=True)
class Pays:
    """Does the search pay? One pair searched by each arm (ARMS) at the same budget (trials, epochs, ASHA),
    with each search seed; each arm's best config over its seeds (by validation) is retrained with `seeds`
    seeds and read once on the test set. The recipe arm is one trial, whatever the seed: run once."""
    search: tuple[str, ...]  # tuning.search arguments shared by the arms: the space, one pair, the budget
    search_seeds: tuple[int, ...] = (0, 1)
    seeds: int = 3
    retrain_epochs: int | None = None

    def searches(self) -> list[tuple[str, int, tuple[str, ...]]]:
        """(arm, search seed, its tuning.search arguments) of every search."""
        return [(arm, seed, (*self.search, *extra)) for arm, extra in ARMS
                for seed in (self.search_seeds[:1] if arm == "recipe" else self.search_seeds)]


@dataclass(frozen=True)
class Scale:
    name: str
    description: str
    parts: tuple[Part, ...]
    bench: tuple[str, ...]  # tools.heads_bench arguments: the heads' cost at large C
    fake_data: bool = False  # generated data: no --data-dir needed
    cpus_per_task: float = 1.0
    targets: dict = field(default_factory=dict)  # (part, arch) -> the softmax test accuracy it should reach
    pays: Pays | None = None


def _cnn_search(*extra: str) -> tuple[str, ...]:
    # the seed reports' own CNNs: 10,000 training images, 8 epochs a trial, ASHA may stop one at 2 or 6
    # epochs; two trials at once, one core each.
    return ("--space", "cnn_heads", "--set", "train_limit=10000", "--set", "grace_period=2",
            "--set", "reduction_factor=3", "--max-concurrent", "2", "--cpus-per-trial", "1", *extra)


def _airnet_search(*extra: str) -> tuple[str, ...]:
    # airnet_s x every head, 8 trials per pair on 10,000 training images, 8 epochs a trial (bf16, 2 trials
    # at once, one core each); ASHA within each pair stops a trial at 2 or 6 epochs.
    return ("--space", "airnet_heads", "--set", "epochs=8", "--set", "train_limit=10000", "--set", "grace_period=2",
            "--set", "reduction_factor=3", "--max-concurrent", "2", "--cpus-per-trial", "1", *extra)


SCALES = {s.name: s for s in (
    Scale("cpu", "CIFAR-100: airnet_s (the fast backbone) x every head (8 trials per pair, then 3 seeds of each "
                 "pair's best at 10 epochs on all training images, and again at 20, part cifar100-e20, beside "
                 "softmax at 40: has 20 converged?); Fashion-MNIST: airnet_s + softmax, the same "
                 "way; the seed reports' own CNNs (cnn_base and cnn_keras with softmax and Gumbel, 50 epochs, "
                 "cnn_keras + softmax also at 80 and 150; cnn_vgg, 15 epochs, its config also at 30; searched here, "
                 "one seed each; cnn_base + Gumbel also with cnn_base + softmax's config, three seeds at 50 "
                 "and 80 epochs, beside that config at 80); "
                 "vit_cpu x every head from scratch (one seed, 10 epochs); whether the search pays (airnet_s + "
                 "softmax: the recipe alone, random search + ASHA, TPE + ASHA). Hours on 2 CPU cores: run it "
                 "again after a stop.",
          (Part("cifar100", _airnet_search("--num-samples", "40"), retrain_epochs=10, curve=(5, 20),
                # the curve's 20 epochs were +2.26 points over 10 (seed std 0.29): 10 had not converged, so every
                # pair again at 20 (~35 min a run on one core, 15 runs), and softmax at 40 to judge 20 by
                converge=20),
           # the seed report's Fashion-MNIST CNN (91.84%) on its own data: airnet_s + softmax, 8 trials
           Part("fashion_mnist", _airnet_search("--dataset", "fashion_mnist", "--set", "head=softmax",
                                                "--num-samples", "8"), retrain_epochs=10),
           # the seed reports' own architectures, searched here and trained at the 50-epoch CNN's budget
           # (a run is ~15 min on one core: 1 seed each): cnn_base with softmax and Gumbel (57.09% / 59.50%),
           # cnn_keras (56.02% at 150 epochs; 55.41% here at 50, so its softmax config also at their 150 and at 80:
           # ~22 s an epoch on a core, both runs at once ~1 h)
           Part("cifar100_cnns", _cnn_search("--set", "arch=[cnn_base,cnn_keras]", "--set", "head=[softmax,gumbel]",
                                             "--set", "epochs=8", "--num-samples", "32"), seeds=1, retrain_epochs=50,
                curve=(80, 150), curve_arch="cnn_keras",
                # Gumbel as the seed report trained it, with the softmax run's config (59.50% against 57.09%;
                # its own searched config reached 54.46% here): 3 seeds (~25 min a run on one core, ~15 on two);
                # 58.75% at 50 epochs, so also at 80 beside softmax's config at 80, one run at a time on both
                # cores (60.32% in 25.5-28 min a run: above their 59.50%, not under their ~24 GPU-minutes)
                borrow={("cnn_base", "gumbel"): 3}, longer=(80,), longer_cpus=2),
           # the VGG-like CNN (61% after 8 hours on a CPU): ~220 s an epoch on one core, so 6 trials of 5
           # epochs, then one seed at 15 epochs on both cores (74 min: 57.38%), and its config at 30 (the curve)
           Part("cifar100_vgg", _cnn_search("--set", "arch=cnn_vgg", "--set", "head=softmax", "--set", "epochs=5",
                                            "--num-samples", "6"), seeds=1, retrain_epochs=15, cpus_per_task=2,
                curve=(30,)),
           # the transformer row: vit_cpu (models/vit.py: 6 blocks, width 128, 4x4 patches) x every head from
           # scratch, 4 trials a pair on 10,000 images, then one seed of each pair's best at 10 epochs
           Part("cifar100_vit", ("--space", "vit_cpu_heads", "--set", "train_limit=10000", "--set", "epochs=8",
                                 "--set", "grace_period=2", "--set", "reduction_factor=3", "--num-samples", "20",
                                 "--max-concurrent", "2", "--cpus-per-trial", "1"), seeds=1, retrain_epochs=10)),
          ("--classes", "100,10000,100000", "--dim", "256", "--batch", "128", "--repeats", "3", "--min-time", "0.3"),
          targets={("cifar100", None): 0.61, ("fashion_mnist", None): 0.935},
          # does the search pay? airnet_s + softmax, 12 trials an arm and search seed, as the cifar100 part's pairs
          pays=Pays(_airnet_search("--set", "head=softmax", "--num-samples", "12"), retrain_epochs=10)),
    Scale("gpu", "CIFAR-100: resnet18, vit_tiny, efficientnet_b0 x every head (4 trials per pair, 30 epochs, "
                 "four trials per GPU); Fashion-MNIST: cnn_bn4 + softmax, 15 epochs. Not run yet: about 4 hours on "
                 "one H100 by an estimate (2,250 epochs of 50,000 images at ~8,000 images/s), not a measurement.",
          (Part("cifar100", ("--space", "all_heads", "--set", "arch=[resnet18,vit_tiny,efficientnet_b0]",
                             "--num-samples", "60", "--gpus-per-trial", "0.25", "--max-concurrent", "4",
                             "--set", "grace_period=5", "--set", "reduction_factor=2")),
           Part("fashion_mnist", ("--space", "cnn_heads", "--dataset", "fashion_mnist", "--set", "arch=cnn_bn4",
                                  "--set", "head=softmax", "--set", "epochs=15", "--num-samples", "4",
                                  "--gpus-per-trial", "0.25", "--max-concurrent", "4"))),
          ("--classes", "100,10000,100000,1000000", "--dim", "512", "--batch", "256", "--device", "cuda"),
          cpus_per_task=4.0, targets={("cifar100", "resnet18"): 0.75, ("fashion_mnist", None): 0.93}),
    Scale("tiny", "the smoke space on generated data: checks the pipeline, not the models.",
          (Part("cifar100", ("--space", "smoke", "--set", "epochs=2", "--num-samples", "5", "--set", "grace_period=1"),
                curve=(1, 3), converge=3, borrow={("cnn", "gumbel"): 1}, longer=(3,)),
           Part("fashion_mnist", ("--space", "smoke", "--dataset", "fashion_mnist", "--set", "head=softmax",
                                  "--set", "epochs=2", "--num-samples", "1", "--set", "grace_period=1"))),
          ("--classes", "100,1000", "--dim", "32", "--batch", "16", "--repeats", "1", "--min-time", "0.01"),
          fake_data=True, targets={("cifar100", None): 0.57, ("fashion_mnist", None): 0.93},
          pays=Pays(("--space", "smoke", "--set", "head=softmax", "--set", "epochs=2", "--num-samples", "3",
                     "--set", "grace_period=1"), search_seeds=(0,), seeds=2)),
)}


# ----------------------------------------------------------------------------- the stages
KEEP = "stages"  # results/study-<scale>/stages/: what finished stages left, committed; a fresh clone goes on from it


class Stages:
    """<keep>/stages.json: every stage that ended well (wall time, command, its log's last lines); those
    are not run again, on this machine or on a fresh clone of the committed results. Stage `part/step`
    logs to <work>/logs/part-step.log; while it runs, a line every PROGRESS_S (`verbosity` 1: the log's last
    line; 2: every line logged since; 0: none)."""

    def __init__(self, work: Path, keep: Path, verbosity: int = 1):
        self.path, self.logs, self.verbosity = keep / "stages.json", work / "logs", verbosity
        self.done: dict[str, dict] = read_json(self.path) if self.path.exists() else {}

    def run(self, key: str, argv: list[str]) -> bool:
        """Run the stage unless done before; True when it ran now."""
        if key in self.done:
            print(f"  {key}: done before ({self.done[key]['seconds']:.0f}s), skipped", flush=True)
            return False
        print(f"  {key}: {shlex.join(argv)}", flush=True)
        log = self.logs / f"{key.replace('/', '-')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        start, read = time.time(), [log.stat().st_size if log.exists() else 0]  # a resumed stage: new lines only

        def progress() -> None:
            if self.verbosity == 1:
                print(f"  {key}: {(time.time() - start) / 60:.1f} min, {last_line(log)}", flush=True)
            elif self.verbosity > 1:
                with log.open("rb") as f:
                    f.seek(read[0])
                    new = f.read()
                read[0] += len(new)
                for line in new.decode(errors="replace").splitlines():
                    print(f"  {key}: {line}", flush=True)

        with log.open("a") as out:
            rc = run_to_the_end(argv, out, progress)
        seconds = time.time() - start
        tail = log.read_text(errors="replace").splitlines()[-15:]
        if rc != 0:
            raise StageFailed(f"{key} exited {rc} after {seconds:.0f}s; its log {log} ends:\n  " + "\n  ".join(tail))
        self.done[key] = {"seconds": round(seconds, 1), "command": shlex.join(argv), "ended": time.strftime("%F %T"),
                          "log_tail": tail}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.done, indent=1))
        tmp.replace(self.path)
        print(f"  {key}: {seconds:.0f}s", flush=True)
        return True


def read_stages(keep: Path) -> dict:
    path = keep / "stages.json"
    if not path.is_file():
        raise ValueError(f"--report-only: no stage has ended yet ({path} does not exist)")
    return read_json(path)


class StageFailed(RuntimeError):
    pass


STOP_WAIT_S = 300  # a stopped search saves its state and ends its trials; a retrain ends its runs in progress
PROGRESS_S = 30  # a line at least this often while a stage works (its log has the detail)


def run_to_the_end(argv: list[str], out, progress: Callable[[], None]) -> int:
    """Run a stage, calling `progress` every PROGRESS_S; on Ctrl-C or SIGTERM pass one SIGINT on and wait for
    the stage's own clean stop (a search saves its state and ends Ray), then stop too. The stage runs in a
    session of its own so that a Ctrl-C at the terminal reaches it once, from here (subprocess.run would
    SIGKILL it and leave Ray's processes)."""
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            try:
                return proc.wait(timeout=PROGRESS_S)
            except subprocess.TimeoutExpired:
                progress()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def last_line(log: Path, limit: int = 160) -> str:
    """The log's last non-empty line not indented (its end only: logs grow to megabytes), shortened: an
    indented line continues the one above it (the search's per-pair status under its totals)."""
    with log.open("rb") as f:
        f.seek(max(0, f.seek(0, 2) - 4096))
        lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    heads = [line for line in lines if not line[0].isspace()] or lines
    line = heads[-1].strip() if heads else "(nothing logged yet)"
    return line if len(line) <= limit else line[:limit - 3] + "..."


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc}); move it away to run its stages again") from None


def module(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", name, *args]


def publish_search(exp: Path, keep: Path) -> None:
    """A finished search's small outputs into the committed folder: its trials, history and spec."""
    from analysis.results import to_parquet

    results = Results.open(exp)
    keep.mkdir(parents=True, exist_ok=True)
    to_parquet(results.trials(), keep / "trials.parquet")
    to_parquet(results.history(), keep / "history.parquet")
    (keep / "spec.json").write_text(json.dumps(results.spec, indent=1, default=str))


def run_search(stages: Stages, key: str, exp: Path, kept: Path, seed: int, data: list[str],
               search: tuple[str, ...]) -> None:
    """The search stage `key` into the experiment folder `exp` (resumed when a stop cut it), its small outputs
    published into `kept` when it ends, or on the next run when a stop came between the two."""
    resume = ["--resume"] if (exp / "spec.json").exists() else []  # a search stopped before it ended
    # the console's normal level: the stage's progress line (its log's last line) is then a trial event or
    # the 30-s status (trials done, best val_acc), not the search's header
    if stages.run(key, module("tuning.search", "--storage", str(exp.parent), "--name", exp.name, "--seed", str(seed),
                              "--no-dashboard", *data, *(resume or search))) or (
            (exp / "spec.json").exists() and not (kept / "spec.json").exists()):  # (a stop before it was kept)
        publish_search(exp, kept)


def _softmax_job(chosen: dict, stage: str, arch: str | None, purpose: str) -> dict:
    """The retrain's softmax run (seed 0) of `arch` (None: the first) that `stage` trains again; none stops
    the stage in one line."""
    job = next((j for j in chosen["jobs"] if j["config"]["head"] == "softmax" and j["seed"] == 0
                and arch in (None, j["config"]["arch"])), None)
    if job is None:
        raise StageFailed(f"{stage}: the retrain has no softmax run{f' of {arch}' if arch else ''} {purpose}")
    return job


def write_chosen(path: Path, chosen: dict) -> None:
    """A stage's chosen.json, written once: a rerun (here or on a fresh clone) trains the same jobs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(chosen, indent=1))


def _at(job: dict, epochs: int) -> dict:
    """A retrain's job at another budget: its label ends in -e<epochs>."""
    return {**job, "config": {**job["config"], "epochs": epochs}, "label": f"{job['label']}-e{epochs}"}


def curve_jobs(kept: Path, budgets: tuple[int, ...], arch: str | None = None) -> Path:
    """<kept>/curve/chosen.json: the softmax pair's retrained config (`arch`'s, or the first), seed 0, once
    per budget (epochs)."""
    path = kept / "curve" / "chosen.json"
    if not path.exists():
        chosen = read_json(kept / "retrain" / "chosen.json")
        job = _softmax_job(chosen, f"{kept.name}/curve", arch, "to train at other budgets")
        # the longest first: two at once end together
        chosen["jobs"] = [_at(job, e) for e in sorted(budgets, reverse=True)]
        write_chosen(path, chosen)
    return path


def borrow_jobs(kept: Path, borrow: dict, epochs: int | None) -> Path:
    """<kept>/borrowed/chosen.json: each (arch, head) of `borrow` with the arch's retrained softmax config,
    `epochs` (default: the config's), seeds 0..n-1."""
    path = kept / "borrowed" / "chosen.json"
    if not path.exists():
        chosen, jobs = read_json(kept / "retrain" / "chosen.json"), []
        for (arch, head), seeds in borrow.items():
            job = _softmax_job(chosen, f"{kept.name}/borrowed", arch, f"whose config {head} could take")
            # softmax's optimiser, schedule and regularisers; the head's own options at their defaults
            config = {k: v for k, v in job["config"].items() if not k.startswith("head_")}
            config.update(head=head, **({"epochs": epochs} if epochs else {}))
            label = job["label"].replace("-softmax-", f"-{head}-with-softmax-")
            jobs += [{"config": config, "seed": s, "label": label} for s in range(seeds)]
        chosen["jobs"] = jobs
        write_chosen(path, chosen)
    return path


def longer_jobs(kept: Path, borrowed: Path, budgets: tuple[int, ...]) -> Path:
    """<kept>/longer/chosen.json: the `borrowed` chosen.json's runs at each of `budgets`, then each of their
    archs' softmax config (seed 0) at the same budget; labels end in -e<epochs>."""
    path = kept / "longer" / "chosen.json"
    if not path.exists():
        chosen, borrowed = read_json(kept / "retrain" / "chosen.json"), read_json(borrowed)["jobs"]
        softmax = [_softmax_job(chosen, f"{kept.name}/longer", arch, "to train at a longer budget")
                   for arch in dict.fromkeys(job["config"]["arch"] for job in borrowed)]
        chosen["jobs"] = [_at(job, e) for e in budgets for job in (*borrowed, *softmax)]
        write_chosen(path, chosen)
    return path


def converge_jobs(kept: Path, epochs: int) -> Path:
    """<kept>/converge/chosen.json: softmax's retrained config (seed 0) at 2 x `epochs`, then every retrained
    (config, seed) at `epochs`, seed-major as the retrain (a stop leaves every head's first seed first)."""
    path = kept / "converge" / "chosen.json"
    if not path.exists():
        chosen = read_json(kept / "retrain" / "chosen.json")
        softmax = _softmax_job(chosen, f"{kept.name}/converge", None, "to judge the budget by")
        # the longest run first: it trains beside the others instead of alone at the end
        chosen["jobs"] = [_at(softmax, 2 * epochs), *[_at(job, epochs) for job in chosen["jobs"]]]
        write_chosen(path, chosen)
        reuse_runs(kept / "curve", path.parent, chosen["jobs"])
    return path


def reuse_runs(src: Path, dst: Path, jobs: list[dict]) -> None:
    """The runs another retrain (`src`) finished with the same label and seed (the same config, seed and
    budget) copied into `dst` with their confusion matrices: that retrain skips them instead of training them
    again."""
    from analysis.runs import run_file

    for job in jobs:
        run, copy = run_file(src, job), run_file(dst, job)
        if run.exists() and not copy.exists():
            row = json.loads(run.read_text())
            for key in ("confusion_file", "confusion_coarse_file"):
                if row.get(key) and (src / row[key]).exists():
                    shutil.copy(src / row[key], dst / row[key])
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(run, copy)


def run_study(scale: Scale, work: Path, data_dir: str | None, seed: int, keep: Path | None = None,
              verbosity: int = 1) -> dict:
    """Every stage of every part (those done before are skipped); returns stages.json's content."""
    keep = keep or work / KEEP
    work.mkdir(parents=True, exist_ok=True)
    stages = Stages(work, keep, verbosity)
    data = [] if scale.fake_data else ["--data-dir", data_dir]
    for part in scale.parts:
        exp, kept = work / part.name, keep / part.name
        run_search(stages, f"{part.name}/search", exp, kept, seed, data, part.search)
        chosen = kept / "retrain" / "chosen.json"  # a retrain started before (here or on another machine)
        epochs = ["--epochs", str(part.retrain_epochs)] if part.retrain_epochs else []
        cpus = f"{part.cpus_per_task or scale.cpus_per_task:g}"

        def retrain(step: str, jobs: Path, *more: str, cpus: str = cpus) -> None:
            """The part's stage `step` trains `jobs` (an experiment's best or a chosen.json) into <kept>/<step>."""
            stages.run(f"{part.name}/{step}", module("analysis.retrain", str(jobs), "--out", str(kept / step),
                                                     "--cpus-per-task", cpus, *more, *data))

        retrain("retrain", chosen if chosen.exists() else exp, "--seeds", str(part.seeds), *epochs)
        if part.curve:
            retrain("curve", curve_jobs(kept, part.curve, part.curve_arch))
        if part.converge:
            retrain("converge", converge_jobs(kept, part.converge))
        if part.borrow:
            borrowed = borrow_jobs(kept, part.borrow, part.retrain_epochs)
            retrain("borrowed", borrowed)
            if part.longer:
                retrain("longer", longer_jobs(kept, borrowed, part.longer),
                        cpus=f"{part.longer_cpus or part.cpus_per_task or scale.cpus_per_task:g}")
        if not (exp / "spec.json").exists():
            print(f"  {part.name}/report: skipped, its search's experiment is not on this machine (the study's "
                  "report is made from the committed stages alone)", flush=True)
            continue
        analysis = exp / "analysis"  # the part's own report reads its retrain from the experiment
        analysis.mkdir(exist_ok=True)
        for f in (kept / "retrain").glob("*.npy"):
            shutil.copy(f, analysis / f.name)
        shutil.copy(kept / "retrain" / "final.parquet", analysis / "final.parquet")
        if stages.run(f"{part.name}/report", module("analysis.report", str(exp))):
            shutil.rmtree(kept / "report", ignore_errors=True)  # the part's own report, kept without matrices
            shutil.copytree(analysis, kept / "report", ignore=shutil.ignore_patterns("*.npy", "*.parquet", "runs",
                                                                                     "chosen.json"))
    if scale.pays:
        run_pays(scale.pays, stages, work, keep / PAYS, data, f"{scale.cpus_per_task:g}")
    stages.run("heads_bench", module("tools.heads_bench", *scale.bench, "--out", str(keep / "heads_bench")))
    return stages.done


PAYS = "pays"  # <keep>/pays/<arm>-s<seed>/ (each search's kept outputs) and pays/retrain/


def run_pays(pays: Pays, stages: Stages, work: Path, kept: Path, data: list[str], cpus: str) -> None:
    """The search-pays arms: every search (skipped when done, resumed when cut), then the retrain of each arm's
    best config."""
    for arm, seed, search in pays.searches():
        name = f"{arm}-s{seed}"
        run_search(stages, f"{PAYS}/{name}/search", work / f"{PAYS}-{name}", kept / name, seed, data, search)
    chosen = kept / "retrain" / "chosen.json"
    if not chosen.exists():
        chosen.parent.mkdir(parents=True, exist_ok=True)
        chosen.write_text(json.dumps(pays_jobs(pays, kept), indent=1, default=str))
    epochs = ["--epochs", str(pays.retrain_epochs)] if pays.retrain_epochs else []
    stages.run(f"{PAYS}/retrain", module("analysis.retrain", str(chosen), "--out", str(kept / "retrain"),
                                        "--cpus-per-task", cpus, *epochs, *data))


def pays_jobs(pays: Pays, kept: Path) -> dict:
    """chosen.json of the search-pays retrain: each arm's best trial over its searches (validation only), its
    config read from the kept trials table (the search's folder may be on another machine), x seeds."""
    import pandas as pd

    picks = {}
    for arm, seed, _ in pays.searches():
        trials = pd.read_parquet(kept / f"{arm}-s{seed}" / "trials.parquet")
        top = best(trials)
        if len(top) and (arm not in picks or top["best_val_acc"].iloc[0] > picks[arm][1]["best_val_acc"]):
            picks[arm] = (trials, top.iloc[0])
    missing = [arm for arm, _ in ARMS if arm not in picks]
    if missing:
        raise StageFailed(f"{PAYS}: no trial of the {', '.join(missing)} arm finished: nothing to retrain")
    spec = read_json(kept / f"{ARMS[0][0]}-s{pays.search_seeds[0]}" / "spec.json")
    jobs = []
    for seed in range(pays.seeds):  # seed-major, as analysis.retrain: a stop has every arm's first seed
        for arm, (trials, row) in picks.items():
            jobs.append({"config": _config_of(trials, row), "seed": seed, "label": f"{arm}-{row['trial_id']}"})
    return {"experiment": PAYS, "constants": spec.get("constants", {}), "data_dir": spec.get("data_dir"),
            "fake_data": spec.get("settings", {}).get("fake_data", False), "settings": spec.get("settings", {}),
            "jobs": jobs}


def _config_of(trials, row) -> dict:
    """A trial's config: its params.json when its folder is on this machine, else the kept table's columns
    (where lists were written as their JSON text)."""
    from analysis.results import config_value  # pandas: once the searches are done, not for --help

    params = Path(str(row["path"])) / "params.json"
    if params.is_file():
        return Results.trial_config(params.parent)
    return {c: config_value(row[c]) for c in config_columns(trials) if not _missing(row[c])}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


@guard
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m analysis.study", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="cpu", choices=sorted(SCALES), help="the study's size (default: cpu)")
    p.add_argument("--data-dir", default="../shared/data", help="folder with the official dataset files")
    p.add_argument("--work", default="./experiments", help="where the experiments and logs go (not committed)")
    p.add_argument("--out", default="./results", help="where results/study-<scale>/ is written (committed)")
    p.add_argument("--seed", type=int, default=0, help="seeds every search's sampler")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true", help="each stage's start and end only, no progress lines")
    talk.add_argument("-v", "--verbose", action="store_true",
                      help="every line the stage logs (every 30 s), not only its last one")
    p.add_argument("--report-only", action="store_true",
                   help="run no stage: write results/study-<scale>/ from the stages done so far (a partial report)")
    args = p.parse_args(argv)
    scale = SCALES[args.scale]
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM stops the stage in progress cleanly too
    if not scale.fake_data and not Path(args.data_dir).is_dir():
        raise ValueError(f"--data-dir={args.data_dir}: no such folder (it must hold cifar-100-python/ and "
                         "fashion-mnist/)")
    for flag in ("work", "out"):  # both written to; checked before hours of work
        check_out_dir(getattr(args, flag), f"--{flag}")
    name = f"study-{scale.name}"
    work, out = Path(args.work).resolve() / name, Path(args.out).resolve() / name  # stages run from the root
    data_dir = str(Path(args.data_dir).resolve())
    command = shlex.join(["python", "-m", "analysis.study", *(argv if argv is not None else sys.argv[1:])])
    if args.report_only and (out / "command.txt").is_file():  # the report is still the last run's work
        command = (out / "command.txt").read_text().strip()
    print(f"{name}: {scale.description}\nwork folder {work}; results into {out}", flush=True)
    start = time.time()
    try:
        done = read_stages(out / KEEP) if args.report_only else run_study(scale, work, data_dir, args.seed, out / KEEP,
                                                                            1 - args.quiet + args.verbose)
    except StageFailed as exc:
        print(f"error: {exc}\nrun the same command again to go on from there", file=sys.stderr)
        return 1
    from analysis.study_report import store_notebook, write_results  # matplotlib and friends: once the work is done
    path = write_results(scale, out, done, command, out / KEEP)
    print(f"wrote {path} ({time.time() - start:.0f}s this run)")
    if out == ROOT / "results" / "study-cpu":  # the notebook on the committed study is stored with its outputs
        print(f"stored {store_notebook(ROOT / 'examples' / 'analysis.ipynb')} with its outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
