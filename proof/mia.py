"""Membership inference against the (ε, δ)-DP ceilings, on models trained through the service.

The data: flchain (bench/tables.py; Olmsted County free-light-chain study, public, one row per
patient). It is split once (fixed seed) into the attacker's public pool and a target pool; each
target-pool patient is a member with probability 1/2. Through a real server on loopback the
hospital uploads the members, an officer shares them, the manufacturer submits a deliberate
memoriser (proof/packages/flchain-memoriser) and DP training jobs at each ε (δ = 1e-5; the
service's budget-aware recipe, no held-out share: every member is trained on), and downloads the
released weights. A non-private reference (the same package and members, plain Adam, no clipping,
no noise) is trained in this script: the service has no non-private path, by design.

Attacks on every model, scored on the target pool: LiRA, offline variant (Carlini et al., S&P
2022), with K shadow models per model trained on random public subsets as large as the member set
by the same procedure (for DP models, the service's own DP-SGD trainer in-process with the same σ,
q and steps, checked against the job's receipt), and the simple loss threshold. Reported: AUC,
TPR at 0.1% and 1% FPR, each with its confidence bound, next to the ceiling (ε, δ)-DP allows
(proof/mia_bounds.py says how). The section fails if any DP model's attack is above its ceiling
with confidence (a bug), or if the reference's attack does not beat the ε = 1 ceiling, in AUC or
TPR at 1% FPR (an attack too weak to say anything).

Sizes: full (the default; `make proof`): all of flchain, ε = 1, 3, 8, 16 shadows per model; --quick
(what `make test` runs): 400 patients, ε = 8 (its recipe capped at 16 epochs) and the reference, 4
shadows, still a real server.
Prints the section's Markdown; writes the plot (mia.png) under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tables import Table, tables, write_csv  # noqa: E402
from bench.utility import Service, model_parameters  # noqa: E402
from cleanroom.domain.recipe import Recipe, budget_recipe  # noqa: E402
from cleanroom.sdk import Client  # noqa: E402
from cleanroom.v1 import jobs_pb2  # noqa: E402
from proof import mia_train  # noqa: E402
from proof.mia_bounds import AttackResult, Finding, above_ceiling, lira_offline, measure  # noqa: E402
from proof.mia_report import ModelResult, plot, section_body  # noqa: E402
from proof.report import FIGURES, Section  # noqa: E402

PACKAGE = ROOT / "proof" / "packages" / "flchain-memoriser"
DELTA = 1e-5
SEED = 20
TEETH_EPSILON = 1.0       # the reference's attack must beat this ε's ceiling ...
TEETH_METRICS = ("AUC", "TPR at 1.0% FPR")   # ... in one of these
PER_PATIENT_VARIANCE_FROM = 16   # shadows from which LiRA fits each patient's own variance


@dataclass(frozen=True)
class Size:
    patients: int | None      # None: the whole table
    epsilons: tuple[float, ...]
    shadows: int
    max_epochs: int | None = None   # caps the recipe's epochs (fewer noisy steps; σ is calibrated to them)


# The fast size caps the epochs (16: ~47 noisy steps instead of ~200) to keep its test inside its
# time budget; the job and its shadows still run the same plan, calibrated to those steps.
FULL, QUICK = Size(None, (1.0, 3.0, 8.0), 16), Size(400, (8.0,), 4, max_epochs=16)


@dataclass(frozen=True)
class Split:
    """Row indices into the table: the attacker's pool, the target pool, and who of the target
    pool is a member (uploaded and trained on)."""

    public: np.ndarray
    target: np.ndarray
    member: np.ndarray       # bool, one per target-pool patient

    @property
    def members(self) -> np.ndarray:
        return self.target[self.member]


def split_patients(total: int, patients: int | None, seed: int = SEED) -> Split:
    rng = np.random.default_rng(seed)
    rows = rng.permutation(total)[: patients or total]
    half = len(rows) // 2
    public, target = np.sort(rows[:half]), np.sort(rows[half:])
    return Split(public, target, rng.random(len(target)) < 0.5)


class MiaService(Service):
    """bench/utility.py's service (one hospital, officer and manufacturer on a real server), whose
    jobs hold nothing out: the attack needs every member trained on."""

    def submit_job(self, model: str, dataset: str, table: Table, epsilon: float, recipe: Recipe) -> str:
        spec = jobs_pb2.TrainingSpec(
            model=model, dataset=dataset, feature_columns=list(table.features), label_column="outcome",
            target_epsilon=epsilon, target_delta=DELTA, epochs=recipe.epochs, expected_batch_patients=recipe.expected_batch_patients,
            learning_rate=recipe.learning_rate, optimizer=recipe.optimizer, clipping_norm=recipe.clipping_norm,
            validation_fraction=0.0, max_rows_per_patient=1)
        with Client(self.address, self.maker.token) as maker:
            return str(maker.train(spec).name)

    def collect(self, job: str) -> tuple[bytes, dict[str, Any]]:
        """The released weights and the signed receipt's DP parameters, once the job is done."""
        with Client(self.address, self.maker.token) as maker:
            done = maker.wait_job(job, timeout=3600)
            if done.state != jobs_pb2.JOB_STATE_RELEASED:
                raise RuntimeError(f"job {job} did not release ({jobs_pb2.JobFailure.Name(done.failure)})")
            files = maker.download_all(done)
        return files["weights.safetensors"], _dp_parameters(json.loads(files["receipt.json"]))


def _dp_parameters(receipt: Any) -> dict[str, Any]:
    """The signed receipt's dp_parameters, wherever the report nests them."""
    if isinstance(receipt, dict):
        if isinstance(receipt.get("dp_parameters"), dict):
            return dict(receipt["dp_parameters"])
        for value in receipt.values():
            found = _dp_parameters(value)
            if found:
                return found
    return {}


def _lira(target: np.ndarray, shadows: np.ndarray) -> np.ndarray:
    return lira_offline(target, shadows, per_patient_variance=len(shadows) >= PER_PATIENT_VARIANCE_FROM)


def _attacks(name: str, epsilon: float | None, target: np.ndarray, shadows: np.ndarray, member: np.ndarray,
             utility: float, notes: str) -> ModelResult:
    lira_scores = _lira(target, shadows)
    attacks = (measure("LiRA", lira_scores, member), measure("loss threshold", target, member))
    return ModelResult(name, epsilon, attacks, lira_scores, member, utility, notes)


def _utility(package: Path, state: dict[str, Any], X: np.ndarray, y: np.ndarray) -> float:
    """AUROC on the non-members (patients no model saw): what the model is worth, for context."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, mia_train.confidences(package, state, X, np.ones_like(y))))


def _load_weights(data: bytes) -> dict[str, Any]:
    from safetensors.torch import load

    return dict(load(data))


def _same_plan(job: dict[str, Any], shadow: Any) -> str | None:
    """None when the shadows ran the job's σ, q and steps; else what differs."""
    pairs = {"noise_multiplier": shadow.noise_multiplier, "sample_rate": shadow.sample_rate, "steps": shadow.steps}
    differ = [f"{k}: job {job.get(k)!r}, shadows {v!r}" for k, v in pairs.items() if job.get(k) is None or abs(float(job[k]) - v) > 1e-9 * max(1.0, abs(v))]
    return "; ".join(differ) or None


def _recipe(members: int, epsilon: float, size: Size) -> Recipe:
    recipe = budget_recipe(patients=members, epsilon=epsilon, model_parameters=model_parameters(PACKAGE))
    if size.max_epochs is None or recipe.epochs <= size.max_epochs:
        return recipe
    return dataclasses.replace(recipe, epochs=size.max_epochs, rule=f"{recipe.rule} with its epochs capped at {size.max_epochs}")


def _dp_model(service: MiaService, job: str, epsilon: float, split: Split, data: tuple[np.ndarray, np.ndarray],
              size: Size, rng: np.random.Generator) -> tuple[ModelResult, str | None]:
    """The shadows first, while the service trains the model, then the job's weights."""
    X, y = data
    members = len(split.members)
    recipe = _recipe(members, epsilon, size)
    program, plans = mia_train.export(PACKAGE), []

    def trainer(Xs: np.ndarray, ys: np.ndarray) -> dict[str, Any]:
        plans.append(mia_train.train_dp(program, Xs, ys, recipe=recipe, epsilon=epsilon, delta=DELTA))
        return dict(plans[-1].trained_state)

    shadow = mia_train.shadow_confidences(trainer, PACKAGE, split.public, members, size.shadows, rng, data, split.target)
    weights, receipt = service.collect(job)
    state = _load_weights(weights)
    target = mia_train.confidences(PACKAGE, state, X[split.target], y[split.target])
    outside = split.target[~split.member]
    plan = plans[0]
    notes = (f"trained by the service: {recipe.describe()}; σ = {plan.noise_multiplier:.3f}, q = {plan.sample_rate:.4f}, "
             f"{plan.steps} steps, as the shadows' trainer computed them (the job's receipt is checked against these)")
    result = _attacks(f"ε = {epsilon:g}", epsilon, target, shadow, split.member, _utility(PACKAGE, state, X[outside], y[outside]), notes)
    return result, _same_plan(receipt, plans[0])


def _reference(split: Split, data: tuple[np.ndarray, np.ndarray], shadows: int, rng: np.random.Generator) -> ModelResult:
    X, y = data

    def trainer(Xs: np.ndarray, ys: np.ndarray) -> dict[str, Any]:
        return mia_train.train_non_private(PACKAGE, Xs, ys)

    state = trainer(X[split.members], y[split.members])
    target = mia_train.confidences(PACKAGE, state, X[split.target], y[split.target])
    shadow = mia_train.shadow_confidences(trainer, PACKAGE, split.public, len(split.members), shadows, rng, data, split.target)
    outside = split.target[~split.member]
    notes = (f"trained in this script (the service has no non-private path): full-batch Adam, learning rate "
             f"{mia_train.NON_PRIVATE_LEARNING_RATE:g}, {mia_train.NON_PRIVATE_STEPS} steps, no clipping, no noise")
    return _attacks("non-private reference", None, target, shadow, split.member, _utility(PACKAGE, state, X[outside], y[outside]), notes)


def verdict(results: list[ModelResult], plan_errors: list[str], *, teeth_epsilon: float = TEETH_EPSILON) -> tuple[bool, list[str]]:
    """(passed, what decided it, in words). The reference's teeth count in AUC or TPR at 1% FPR:
    0.1% FPR is too few non-members at the fast size to bound."""
    lines, passed = [], True
    for r in results:
        if r.epsilon is None:
            continue
        found: list[Finding] = [f for a in r.attacks for f in above_ceiling(a, epsilon=r.epsilon, delta=DELTA)]
        passed &= not found
        lines.append(f"{r.name}: " + ("**above its ceiling: a bug.** " + "; ".join(map(str, found)) if found else
                                      "no attack's confidence bound lies above its ceiling."))
    for reference in (r for r in results if r.epsilon is None):
        teeth = [f for a in reference.attacks for f in above_ceiling(a, epsilon=teeth_epsilon, delta=DELTA) if f.metric in TEETH_METRICS]
        passed &= bool(teeth)
        lines.append(f"{reference.name} against the ε = {teeth_epsilon:g} ceiling: " +
                     ("beaten, so the attack has teeth: " + "; ".join(map(str, teeth)) if teeth else
                      "**not beaten: the attack is too weak to say anything.**"))
    for error in plan_errors:
        passed = False
        lines.append(f"**The shadows did not run the job's plan**: {error}")
    return passed, lines


def flchain() -> Table:
    table = next(t for t in tables() if t.name == "flchain")
    return dataclasses.replace(table, package=PACKAGE)


def _measure(service: MiaService, table: Table, split: Split, data: tuple[np.ndarray, np.ndarray], size: Size,
             workdir: Path) -> tuple[list[ModelResult], list[str]]:
    X, y = data
    rng = np.random.default_rng(SEED + 1)
    csv_path = write_csv(workdir / "members.csv", table.features, X[split.members], y[split.members], prefix="member")
    model, dataset = service.submit_model(PACKAGE), service.upload(table, csv_path)
    # Every job is queued now, so the server trains while this process trains the shadows.
    jobs = [service.submit_job(model, dataset, table, e, _recipe(len(split.members), e, size)) for e in size.epsilons]
    results, plan_errors = [_reference(split, data, size.shadows, rng)], []
    for epsilon, job in zip(size.epsilons, jobs):
        result, error = _dp_model(service, job, epsilon, split, data, size, rng)
        results.append(result)
        plan_errors += [f"ε = {epsilon:g}: {error}"] if error else []
    return results, plan_errors


@dataclass(frozen=True)
class Measured:
    size: Size
    results: list[ModelResult]     # the reference first, then each ε
    plan_errors: list[str]
    counts: dict[str, Any]


def measure_all(size: Size) -> Measured:
    """Start a server, train every model, attack each; the server is stopped however it ends."""
    table = flchain()
    X, y = table.load()
    split = split_patients(len(y), size.patients)
    workdir = Path(tempfile.mkdtemp(prefix="cleanroom-proof-mia-"))
    started = time.monotonic()
    service = MiaService(workdir)
    try:
        with mia_train.one_thread(), mia_train.cached_accounting():
            results, plan_errors = _measure(service, table, split, (X, y), size, workdir)
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    counts = dict(patients=len(split.public) + len(split.target), public=len(split.public), members=int(split.member.sum()),
                  non_members=int((~split.member).sum()), shadows=size.shadows, seconds=time.monotonic() - started)
    return Measured(size, results, plan_errors, counts)


def to_section(measured: Measured, *, full: bool, out: Path) -> Section:
    passed, verdicts = verdict(measured.results, measured.plan_errors)
    out.mkdir(parents=True, exist_ok=True)
    figure = plot(measured.results, out / "mia.png", delta=DELTA)
    return Section(title="Membership inference against the DP ceilings", command=_command(full, measured.size),
                   body=section_body(measured.results, verdicts, measured.counts, delta=DELTA), passed=passed, figures=[figure])


def run(*, full: bool, out: Path, shadows: int | None = None) -> Section:
    size = FULL if full else QUICK
    return to_section(measure_all(dataclasses.replace(size, shadows=shadows or size.shadows)), full=full, out=out)


def _command(full: bool, size: Size) -> str:
    default = FULL if full else QUICK
    return ".venv/bin/python proof/mia.py" + ("" if full else " --quick") + ("" if size == default else f" --shadows {size.shadows}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the fast size `make test` runs (400 patients, ε = 8, 4 shadows)")
    parser.add_argument("--shadows", type=int, help="shadow models per model (default: 16 full, 4 quick)")
    parser.add_argument("--out", type=Path, default=FIGURES, help="where the plot goes (default: docs/proof/)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    section = run(full=not args.quick, out=args.out.resolve(), shadows=args.shadows)
    print(section.markdown())
    return 0 if section.passed else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["AttackResult", "FULL", "QUICK", "Measured", "main", "measure_all", "run", "split_patients", "to_section", "verdict"]
