"""An int8 build that meets an accuracy budget by itself.

``backend.quantize.max_drift`` (``mae``, ``sm``, ``maxfmeasure``, ``mean_abs``) with
``backend.quantize.validation`` (images with masks, neither calibration nor evaluation images):
the quantized model's masks are scored against the fp32 model's on the validation images
(:class:`DriftJudge`); while the budget does not hold, layers stay in float, fewest first
(:func:`search_float_nodes`), once one trial with every candidate in float has shown that the
budget can be met at all. Candidates come from the layer-wise drift
(:func:`isnet.build_in.layer_drift.float_candidates`): the tensors whose quantization adds the
most error first, each kept float with every node computing or reading it. The local error is a
poor guide to what a tensor does to the masks (on the pretrained U²-Netp the tensor that moved
the validation MAE most ranked 23rd), so the leading candidates are re-ranked by measurement
(:func:`rank_by_effect`): with each kept float alone, how much drift of the maps it takes off and
how much slower the model gets, both on the validation pictures that move the missed metrics most
(:meth:`DriftJudge.focus`: a bound rests on its worst pictures). Drift removed per share of speed lost comes first: a
full-resolution layer in float costs its own int8 kernel and the conversions of the large
tensors around it (two such groups of U²-Netp cost 30% of int8's speed), a decoder layer at
1/16 of the resolution next to nothing. Where the budget needs many candidates, the costliest
of those kept are then tried back in int8 one by one, since the fewest is not the cheapest.

A budget is a promise about pictures the build has not seen, so a candidate is judged by an upper
bound of its drift, not by the drift on the validation pictures alone: the pictures are resampled
(bootstrap, :data:`BOOTSTRAP_RESAMPLES` times, paired: the same resample for the candidate and
fp32) and the drift of each metric is bounded by the ``validation.confidence`` quantile of its
resampled |change|. A one-sided bound at confidence c needs at least 1 / (1 - c) pictures (20 at
95%), or a single picture decides it.

The metrics live in ``isnet.eval``, a later stage; the caller hands them in as a
:data:`MaskScorer` (``isnet build`` and ``isnet compare`` pass ``isnet.eval.selection_scores``
with ``smeasure=True``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from isnet.build_in.config import BuildConfig
from isnet.build_in.difference import DifferenceAccumulator
from isnet.build_in.imageio import decode_mask, pair_images_with_masks
from isnet.build_in.ops import mask_from_output
from isnet.core import IsnetError

# (masks as uint8 at their image's size, GT masks, selections (S, n) of picture indices) ->
# {"mae": (S,), "sm": (S,), "maxfmeasure": (S,)}: the dataset scores of each selection
MaskScorer = Callable[[list[np.ndarray], list[np.ndarray], np.ndarray], dict[str, np.ndarray]]
# Resamples of the validation pictures behind each bound (the bound's own noise: about 0.5% of it).
BOOTSTRAP_RESAMPLES = 2000


def minimum_pictures(confidence: float) -> int:
    """The fewest validation pictures a one-sided bound at ``confidence`` rests on: 1 / (1 - confidence)."""
    return math.ceil(1 / (1 - confidence) - 1e-9)
# Past this share of the quantized activations kept in float, int8 buys little: the search stops there.
MAX_FLOAT_SHARE = 0.25
# The ranking: validation images the layer-wise drift and the effect of each leading candidate are
# measured on, and how many leading candidates are measured (rank_by_effect).
DRIFT_IMAGES = 8
MEASURED_CANDIDATES = 32


def validation_pairs(config: BuildConfig) -> list[tuple[str, Path, Path]]:
    """``(stem, image, mask)`` of ``backend.quantize.validation``, calibration images left out."""
    validation = config.backend.quantize.validation
    root = validation.path
    image_dir, mask_dir = (root / "image", root / "mask") if (root / "image").is_dir() else (root, root.parent / "mask")
    where = "backend.quantize.validation.path"
    if not mask_dir.is_dir():
        raise IsnetError(f"{where}: {root} needs masks: an image/ and mask/ folder inside it, or a mask/ folder "
                         "beside it")
    calibration = {p.resolve() for p in config.calibration_images()}
    try:
        pairs = [pair for pair in pair_images_with_masks(image_dir, mask_dir) if pair[1].resolve() not in calibration]
    except IsnetError as exc:
        raise IsnetError(f"{where}: {exc}") from None
    if not pairs:
        raise IsnetError(f"{where}: every image in {image_dir} is a calibration image; validation needs others")
    return pairs[: validation.count]


@dataclass(frozen=True)
class Probe:
    """A quick measurement of one candidate model on a few validation images."""

    drift: float  # mean |difference| of its maps from fp32's
    seconds: float  # inference time of those images


# Every candidate in float leaving a metric's drift above this many times its bound ends a budget search
# at once; a narrower miss goes on searching (a subset of the candidates may drift less than all of them).
HOPELESS_FACTOR = 2.0
# A candidate's speed cost is measured on a few images, with the timer's noise (a few percent on a
# busy 2-core host): slowdowns count in steps of this share, the first step for free, so that
# candidates of equal effect keep their order unless one is really slower.
COST_STEP = 0.05
# What the budget search does with the candidates it keeps: leave their nodes float, or (an
# integer-only build) give their tensors 16-bit integers.
FLOAT = "float"
SIXTEEN_BIT = "16-bit"
# A group's damage alone in an otherwise faithful model stands far above the noise (on ISNet the
# three pictures probed gave each group's within a factor 2 of each other): fewer images do.
ISOLATED_IMAGES = 3
# rank(candidates, quantize, judge, images, progress) -> Ranked
Ranking = Callable[..., "Ranked"]
# Once the fewest leading candidates are found, the costliest of them (those whose float costs more
# than one COST_STEP) are tried back in int8, one trial each, this many at most: the ranking puts
# cheap candidates first, but where the budget needs a long prefix it takes in expensive ones too
# (on the pretrained U²-Netp, 25 were needed and the 17th held the 320x320 decoder Conv, 28% of
# fp32's whole time alone).
PRUNE_TRIALS = 4


def group_nodes(groups: Sequence[Sequence[str]]) -> list[str]:
    """The items of ``groups`` in order, each once (groups may share nodes)."""
    return list(dict.fromkeys(item for group in groups for item in group))


@dataclass(frozen=True)
class Ranked:
    """Candidates in the order to keep them, and what keeping each alone costs in speed (a share:
    0.3 = the model 30% slower), where it was measured."""

    order: list[tuple[str, ...]]
    cost: dict[tuple[str, ...], float] = field(default_factory=dict)


@dataclass(frozen=True)
class BudgetCheck:
    """One candidate model scored on the validation images."""

    within: bool
    drift: dict[str, float]  # |metric change| per budget key, and mean_abs, on the validation pictures
    bound: dict[str, float]  # their upper bounds at the judge's confidence: what the budget is held to
    images_per_second: float
    # Each key's change on each validation picture alone (its score on that picture minus fp32's;
    # mean_abs: the map's mean |difference|): where the bound comes from (DriftJudge.focus)
    picture_change: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)


class DriftJudge:
    """Scores candidate models against the fp32 model's masks on the validation images."""

    def __init__(self, config: BuildConfig, reference: Path, scorer: MaskScorer | None,
                 open_runner: Callable[..., object], progress: Callable[[str, int, int], None] | None = None,
                 candidate_options: dict | None = None):
        quant = config.backend.quantize
        self.bounds = quant.max_drift.metric_bounds()
        if quant.max_drift.mean_abs is not None:
            self.bounds["mean_abs"] = quant.max_drift.mean_abs
        if set(self.bounds) - {"mean_abs"} and scorer is None:
            raise IsnetError("backend.quantize.max_drift: metric budgets are scored with isnet.eval; build with "
                             "`isnet build` (or pass scorer=partial(isnet.eval.selection_scores, smeasure=True) "
                             "to build_artifact)")
        self.pairs = validation_pairs(config)
        self.confidence = quant.validation.confidence
        needed = minimum_pictures(self.confidence)
        if len(self.pairs) < needed:
            raise IsnetError(f"backend.quantize.validation: {len(self.pairs)} validation pictures cannot bound the "
                             f"drift at {self.confidence:.0%} confidence; give at least {needed} (more pictures "
                             "with masks, or a higher validation.count), or a lower validation.confidence")
        count = len(self.pairs)
        # Row 0: the validation pictures themselves; then the resamples (fixed: every candidate and
        # fp32 are judged on the same ones, and a rebuild judges alike); last, one row per picture
        # repeating it, which scores that picture alone.
        self.selections = np.vstack([np.arange(count), np.random.default_rng(0).integers(
            0, count, size=(BOOTSTRAP_RESAMPLES, count)), np.repeat(np.arange(count)[:, None], count, axis=1)])
        self.probe_pictures = list(range(count))  # the pictures ranking probes use, first first (focus)
        self.preprocessor = config.preprocessor()
        self.scorer = scorer
        # Candidates open as the artifact will (an OpenVINO build's float layers in bf16, say); the
        # fp32 reference with the runner's defaults.
        self.open_runner = (lambda path: open_runner(path, **candidate_options)) if candidate_options else open_runner
        self.progress = progress
        self.stage = "validate fp32"
        self.trials = 0
        self._probe_inputs: dict[int, np.ndarray] = {}
        self.masks = [decode_mask(mask) for _, _, mask in self.pairs]
        self.fp32_maps, fp32_masks, self.fp32_images_per_second = self._run(open_runner(reference))
        for (_, image, mask), ours, theirs in zip(self.pairs, fp32_masks, self.masks):
            if ours.shape != theirs.shape:
                raise IsnetError(f"backend.quantize.validation: {mask} is {theirs.shape[1]}x{theirs.shape[0]}, its "
                                 f"picture {image.name} {ours.shape[1]}x{ours.shape[0]}; a mask must have its "
                                 "picture's size")
        self.fp32_selected = scorer(fp32_masks, self.masks, self.selections) if set(self.bounds) - {"mean_abs"} else {}
        self.fp32_scores = {key: float(values[0]) for key, values in self.fp32_selected.items()}

    def _inputs(self):
        for _, image, _ in self.pairs:
            yield self.preprocessor.load(image)

    def _run(self, runner) -> tuple[list[np.ndarray], list[np.ndarray], float]:
        maps, masks, seconds = [], [], 0.0
        for tensor, geometry in self._inputs():
            started = time.perf_counter()
            output = runner.infer({runner.input_name: tensor[None]})[runner.output_name]
            seconds += time.perf_counter() - started
            maps.append(output)
            masks.append(self.mask_of(output, geometry))
            if self.progress:
                self.progress(self.stage, 1, len(self.pairs))
        return maps, masks, len(maps) / seconds if seconds > 0 else float("inf")

    @staticmethod
    def mask_of(output: np.ndarray, geometry) -> np.ndarray:
        """A model output (1, 1, H, W) as the uint8 mask ``isnet run`` saves (at the image's size)."""
        return mask_from_output(output[0, 0], geometry)

    def inputs(self, count: int) -> list[np.ndarray]:
        """The inputs of the first ``count`` of :attr:`probe_pictures`, pre-processed; kept, since the
        ranking probes reuse them."""
        for index in self.probe_pictures[:count]:
            if index not in self._probe_inputs:
                self._probe_inputs[index] = self.preprocessor.load(self.pairs[index][1])[0]
        return [self._probe_inputs[index] for index in self.probe_pictures[:count]]

    def focus(self, check: BudgetCheck) -> list[int]:
        """Put first among :attr:`probe_pictures` those that move the metrics ``check`` misses most.

        A bound at 95% rests on the tail of the pictures: on the pretrained U²-Netp at 320, one of 50
        validation pictures (ECSSD 0097) moved its MAE by 0.015 to 0.036 in every int8 build, 30 to 72
        times the budget, and decided the MAE bound; the ranking probes, on the first 8 pictures,
        never saw it. Each picture scores the largest of its changes of the missed metrics, each in
        units of its budget; ties (and a check that misses nothing) keep the order."""
        missed = [key for key in self._missed(check) if key in check.picture_change]
        if missed:
            self.probe_pictures = self._picture_order(check, missed)
            self._probe_inputs = {}  # at 1024x1024 each picture held is 12.6 MB
        return self.probe_pictures

    def probe(self, model_file: Path, count: int) -> Probe:
        """Mean |difference| from fp32 of the maps of the first ``count`` :attr:`probe_pictures`, and
        the time they took (each image's faster of two runs, after an untimed warm-up): a ranking probe."""
        runner = self.open_runner(model_file)
        inputs = self.inputs(count)
        runner.infer({runner.input_name: inputs[0][None]})
        difference, seconds = DifferenceAccumulator(), 0.0
        for tensor, expected in zip(inputs, (self.fp32_maps[index] for index in self.probe_pictures[:count])):
            times = []
            for _ in range(2):
                started = time.perf_counter()
                output = runner.infer({runner.input_name: tensor[None]})[runner.output_name]
                times.append(time.perf_counter() - started)
            seconds += min(times)
            difference.add(expected, output)
        return Probe(difference.total().mean_abs, seconds)

    def __call__(self, model_file: Path) -> BudgetCheck:
        self.trials += 1
        self.stage = f"validate int8 ({self.trials})"
        return self.check(*self._run(self.open_runner(model_file)))

    def check(self, maps: list[np.ndarray], masks: list[np.ndarray], speed: float = float("nan")) -> BudgetCheck:
        """Score one model's raw maps and uint8 masks of the validation images (in order) against fp32's:
        each drift on the pictures, and its upper bound at the judge's confidence."""
        signed: dict[str, np.ndarray] = {}
        if self.fp32_selected:
            selected = self.scorer(masks, self.masks, self.selections)
            signed = {key: selected[key] - self.fp32_selected[key] for key in self.bounds if key in selected}
        changes = {key: np.abs(values) for key, values in signed.items()}
        # The maps' mean |difference| over all pixels, per selection: summed per picture, then resampled.
        sums = np.array([float(np.abs(got.astype(np.float64) - expected).sum()) for expected, got in zip(self.fp32_maps, maps)])
        sizes = np.array([expected.size for expected in self.fp32_maps], dtype=np.float64)
        changes["mean_abs"] = sums[self.selections].sum(axis=1) / sizes[self.selections].sum(axis=1)
        resamples = slice(1, 1 + BOOTSTRAP_RESAMPLES)
        drift = {key: float(values[0]) for key, values in changes.items()}
        bound = {key: float(np.quantile(values[resamples], self.confidence)) for key, values in changes.items()}
        within = all(bound[key] <= limit for key, limit in self.bounds.items())
        pictures = slice(1 + BOOTSTRAP_RESAMPLES, None)
        return BudgetCheck(within, drift, bound, speed, {**{key: values[pictures] for key, values in signed.items()},
                                                         "mean_abs": changes["mean_abs"][pictures]})

    def _missed(self, check: BudgetCheck) -> list[str]:
        return [key for key, limit in self.bounds.items() if check.bound[key] > limit]

    def _picture_order(self, check: BudgetCheck, keys: Sequence[str]) -> list[int]:
        """Picture indices, the largest change of ``keys`` first, each change in units of its budget."""
        keys = [key for key in keys if key in check.picture_change]
        if not keys:
            return list(range(len(self.pairs)))
        score = np.max([np.abs(check.picture_change[key]) / max(self.bounds[key], 1e-12) for key in keys], axis=0)
        return sorted(range(len(self.pairs)), key=lambda index: -score[index])

    def worst_pictures(self, check: BudgetCheck, keys: Sequence[str], count: int = 3) -> list[dict]:
        """The ``count`` validation pictures that move ``keys`` most, with each key's change on them."""
        return [{"picture": self.pairs[index][0], **{key: round(float(check.picture_change[key][index]), 5)
                                                     for key in keys if key in check.picture_change}}
                for index in self._picture_order(check, keys)[:count]]

    def misses(self, check: BudgetCheck) -> str:
        """The bounds ``check`` misses, for an error message (``sm 0.0041 > 0.003``), and the pictures
        that move them most (a bound at 95% rests on a few)."""
        missed = self._missed(check)
        text = ", ".join(f"{key} {check.bound[key]:.4g} > {self.bounds[key]:g}" for key in missed)
        text += f" (upper bounds at {self.confidence:.0%} confidence)"
        worst = self.worst_pictures(check, missed)
        if worst and len(worst[0]) > 1:
            text += "; moved most by " + ", ".join(
                f"{item['picture']} ({' '.join(f'{key} {value:+.4f}' for key, value in item.items() if key != 'picture')})"
                for item in worst)
        return text

    def record(self, check: BudgetCheck) -> dict:
        """What every backend's build.json budget record holds: bounds, validation set, drift on it and its
        upper bounds at the confidence, fp32 scores, and the pictures that move the budgeted metrics most."""
        return {"bounds": self.bounds, "validation": {"path": str(self.pairs[0][1].parent), "images": len(self.pairs),
                                                      "confidence": self.confidence,
                                                      "bootstrap_resamples": BOOTSTRAP_RESAMPLES},
                "drift": check.drift, "drift_upper_bound": check.bound, "fp32_scores": self.fp32_scores,
                "worst_pictures": self.worst_pictures(check, list(self.bounds))}

    def summary(self, result: "SearchResult") -> dict:
        """The search as build.json records it (``float_nodes``, or ``sixteen_bit_tensors`` for an
        integer-only build)."""
        first, final = result.first.images_per_second, result.check.images_per_second
        kept = "sixteen_bit_tensors" if result.remedy == SIXTEEN_BIT else "float_nodes"
        return {**self.record(result.check), "drift_all_int8": result.first.drift, kept: result.float_nodes,
                "images_per_second": {"fp32": round(self.fp32_images_per_second, 2), "all_int8": round(first, 2),
                                      "final": round(final, 2)},
                "estimated_speed_cost": round(1 - final / first, 3) if first else None,
                "trials": result.trials, "candidates": [list(group) for group in result.ranked[:32]]}


@dataclass
class SearchResult:
    """What the search kept in float and what it measured."""

    float_nodes: list[str]  # the candidates' nodes kept (the plan's groups not included)
    check: BudgetCheck
    first: BudgetCheck
    trials: list[dict] = field(default_factory=list)
    ranked: list[tuple[str, ...]] = field(default_factory=list)  # the candidates, in the order tried
    remedy: str = FLOAT  # what the kept candidates became: FLOAT (nodes) or SIXTEEN_BIT (tensors)
    plan_kept: list[tuple[str, ...]] = field(default_factory=list)  # the plan's groups still kept
    plan_released: list[tuple[str, ...]] = field(default_factory=list)  # the plan's groups put back in int8


def search_float_nodes(quantize: Callable[[list[str]], Path], judge: DriftJudge,
                       candidates: Callable[[], Sequence[tuple[str, ...]]],
                       progress: Callable[[str, int, int], None] | None = None,
                       rank: "Ranking | None" = None, remedy: str = FLOAT, whole_model: bool = False,
                       plan_groups: Sequence[tuple[str, ...]] = ()) -> SearchResult:
    """The fewest leading candidates to keep in float for ``judge``'s budget to hold.

    ``quantize(nodes)`` writes the model with ``nodes`` (beyond the build's own exclusions) in
    float and returns its file; ``candidates()`` gives the groups of nodes that may stay float,
    most damaging first by their local error (called only if the model as it is misses the
    budget). With ``remedy`` :data:`SIXTEEN_BIT` the groups are tensors that ``quantize`` gives
    16-bit integers instead (an integer-only build); ``rank`` orders the leading candidates
    (default :func:`rank_by_effect`). ``plan_groups`` are kept in every trial from the start (the
    int8 plan's own remedies, e.g. the nodes around an outlier channel).

    The search tries the model as it is, then every candidate in float at once: where
    even that leaves a metric at more than :data:`HOPELESS_FACTOR` times its bound, no choice
    among them will meet it, and one trial says so (at 1024x1024 a trial takes minutes, and a
    search that doubles its way up to all of them ten). Otherwise it ranks the leading candidates
    by measured effect (:func:`rank_by_effect`) and keeps the first 1, 2, 4, ... in float until the
    budget holds, then bisects down to the fewest (the error of a layer mostly adds up, so more
    float layers rarely drift more; near the noise a subset can drift less than all of them, which
    is why a narrow miss with all of them in float does not end the search). Last, it tries the
    costliest of those back in int8, one at a time (:data:`PRUNE_TRIALS`), and then each plan group:
    another remedy may have made it unneeded (on the pretrained U²-Netp, bias correction fixes the
    outlier channel's damage and its float nodes cost a fifth of int8's speed). With plan groups,
    the very first trial has every layer in int8, them too; when it passes, nothing else is tried.
    IsnetError when the budget cannot be met, or (``whole_model``: the candidates are every quantized layer) only with
    every candidate in float, which would leave nothing in int8.
    """
    trials: list[dict] = []
    written: list[list[str]] = [[]]  # the nodes of the model on disk
    plan_kept = list(plan_groups)

    def write(nodes: list[str]) -> Path:  # every model the search writes, trials and ranking probes alike
        written[0] = list(nodes)
        return quantize(nodes)

    def attempt(kept: Sequence[tuple[str, ...]], plan: Sequence[tuple[str, ...]] = plan_kept, **note) -> BudgetCheck:
        nodes = group_nodes([*plan, *kept])
        check = judge(write(nodes))
        trials.append({"float_candidates": len(kept), "float_nodes": len(nodes), **note, "drift": check.drift,
                       "drift_upper_bound": check.bound, "within": check.within})
        return check

    def with_plan(nodes: list[str]) -> Path:  # what the ranking probes: the plan's groups kept as well
        return write(group_nodes([*plan_groups, nodes]))

    released: list[tuple[str, ...]] = []
    # Every layer in int8, the plan's groups too: where another remedy made them unneeded this one
    # trial ends the search, and otherwise it records what int8 alone drifts (on U²-Netp, with bias
    # correction: MAE 0.0009 on the validation pictures, bound 0.0028).
    bare = attempt([], [], back_in_int8=group_nodes(plan_kept)) if plan_kept else None
    if bare is not None and bare.within:
        released, plan_kept[:] = list(plan_kept), []
    first = bare if bare is not None and bare.within else attempt([])
    kept, check, ranked = [], first, Ranked([])
    if not first.within:
        # Candidates first: their local error is measured on the first pictures (on the pictures that
        # miss, the search failed on U²-Netp: docs/int8-isnet.md); the ranking probes on those that miss.
        groups = candidates()
        judge.focus(first)
        kept, check, ranked = _fewest_leading(attempt, judge, with_plan, groups, first, progress, rank, remedy,
                                              whole_model)
    costly = sorted((group for group in kept if ranked.cost.get(group, 0.0) > COST_STEP),
                    key=lambda group: -ranked.cost[group])[:PRUNE_TRIALS]
    for group in costly:
        trial = [other for other in kept if other != group]
        trial_check = attempt(trial, back_in_int8=list(group))
        if trial_check.within:
            kept, check = trial, trial_check
    for group in list(plan_kept):
        plan = [other for other in plan_kept if other != group]
        trial_check = attempt(kept, plan, back_in_int8=list(group))
        if trial_check.within:
            plan_kept[:], check = plan, trial_check
            released.append(group)
    nodes = group_nodes(kept)
    everything = group_nodes([*plan_kept, *kept])
    if written[0] != everything:
        write(everything)  # the file on disk must be the passing model
    return SearchResult(nodes, check, bare if bare is not None else first, trials, ranked.order, remedy,
                        list(plan_kept), released)


def _fewest_leading(attempt, judge: DriftJudge, quantize, groups: Sequence[tuple[str, ...]], first: BudgetCheck,
                    progress, rank, remedy: str, whole_model: bool):
    """:func:`search_float_nodes`' search proper: (the fewest leading groups that pass, its check, the
    :class:`Ranked` candidates followed by the unmeasured ones)."""
    groups = list(groups)
    # Candidates that are the whole model in float are fp32 again: at most all but one may stay float.
    limit = len(groups) - 1 if whole_model and remedy == FLOAT else len(groups)
    if limit < 1:
        raise IsnetError(_unreachable(judge, first, 0, remedy))
    checks: dict[int, BudgetCheck] = {}
    if limit == len(groups):  # else the whole model float says nothing
        checks[limit] = attempt(groups)
        if any(checks[limit].bound[key] > HOPELESS_FACTOR * bound for key, bound in judge.bounds.items()):
            raise IsnetError(_unreachable(judge, checks[limit], limit, remedy))
    step = (lambda n, total: progress("rank layers", 1, total)) if progress else None
    measured = (rank or rank_by_effect)(groups[:MEASURED_CANDIDATES], quantize, judge, DRIFT_IMAGES, step)
    ranked = measured.order + groups[MEASURED_CANDIDATES:]
    failing, count = 0, 1
    while count < limit:
        checks[count] = attempt(ranked[:count])
        if checks[count].within:
            break
        failing, count = count, count * 2
    passing = min(count, limit)
    if passing not in checks:
        checks[passing] = attempt(ranked[:passing])
    if not checks[passing].within:
        raise IsnetError(_unreachable(judge, checks[passing], passing, remedy, whole_model=limit < len(groups)))
    while passing - failing > 1:
        middle = (passing + failing) // 2
        checks[middle] = attempt(ranked[:middle])
        if checks[middle].within:
            passing = middle
        else:
            failing = middle
    return list(ranked[:passing]), checks[passing], Ranked(ranked, measured.cost)


def search_budget(quantize: Callable[[list[str]], Path], judge: DriftJudge,
                  progress: Callable[[str, int, int], None] | None, *, by_module: bool,
                  modules: Callable[[], Sequence[tuple[str, ...]]],
                  ranked_layers: Callable[[], Sequence[tuple[str, ...]]], remedy: str = FLOAT,
                  plan_groups: Sequence[tuple[str, ...]] = ()) -> SearchResult:
    """The budget search of every int8 build: :func:`search_float_nodes` over the right candidates.

    In a graph named by module (a PyTorch export: ``/stage1d/...``, ``by_module``) the candidates
    are ``modules()``, the items ``quantize`` takes grouped by module
    (:func:`isnet.build_in.sixteen_bit.group_by_module`, the trunk's items each alone), ranked by :func:`rank_by_isolated_damage`: on ISNet at 1024
    single layers do not reach the error (keeping its 28 most damaging layers float left the maps
    0.42 off; docs/int8-isnet.md). Otherwise (U²-Netp's files name layers ``Conv_787``) the
    candidates are ``ranked_layers()``, the backend's layers by local error, re-ranked by
    :func:`rank_by_effect`. ``plan_groups``: as :func:`search_float_nodes` takes them.
    """
    if by_module:
        return search_float_nodes(quantize, judge, modules, progress, rank=rank_by_isolated_damage, remedy=remedy,
                                  whole_model=True, plan_groups=plan_groups)
    return search_float_nodes(quantize, judge, ranked_layers, progress, remedy=remedy, plan_groups=plan_groups)


def rank_by_effect(candidates: Sequence[tuple[str, ...]], quantize: Callable[[list[str]], Path], judge: DriftJudge,
                   images: int, progress: Callable[[int, int], None] | None = None) -> Ranked:
    """``candidates`` in the order :func:`order_by_gain_per_cost` gives, from a probe of ``images``
    validation images with each one alone kept in float and one of the all-int8 model; each one's
    cost is its slowdown over the all-int8 model."""
    base = judge.probe(quantize([]), images)
    probes = []
    for index, group in enumerate(candidates):
        probes.append(judge.probe(quantize(list(group)), images))
        if progress:
            progress(index + 1, len(candidates))
    cost = {group: _slowdown(base, probe) for group, probe in zip(candidates, probes)}
    return Ranked([candidates[i] for i in order_by_gain_per_cost(base, probes)], cost)


def rank_by_isolated_damage(candidates: Sequence[tuple[str, ...]], quantize: Callable[[list[str]], Path],
                             judge: DriftJudge, images: int,
                             progress: Callable[[int, int], None] | None = None) -> Ranked:
    """``candidates`` ordered by what each does alone: with every other candidate kept (float or
    16-bit) and this one int8, the drift it adds over all of them kept, per share of speed that
    quantizing it gains (most damage per gain first); that gain is each one's cost.

    Where errors compound, as in ISNet at 1024 (its all-int8 maps are broken, so keeping any one
    group takes little off and :func:`rank_by_effect` sees noise), each group's own damage in an
    otherwise faithful model is what tells them apart: measured 2026-12-06 on the real ISNet,
    int8 in the encoder alone drifts 0.0002, in the decoder's trunk concatenations alone 0.084.
    """
    images = min(images, ISOLATED_IMAGES)
    everything = group_nodes(candidates)
    base = judge.probe(quantize(everything), images)
    damages, cost = [], {}
    for index, group in enumerate(candidates):
        alone = set(group)
        probe = judge.probe(quantize([item for item in everything if item not in alone]), images)
        damages.append(probe.drift - base.drift)
        cost[group] = _slowdown(probe, base)
        if progress:
            progress(index + 1, len(candidates))
    order = sorted(range(len(candidates)), key=lambda i: (-damages[i] / _cost_steps(cost[candidates[i]]), i))
    return Ranked([candidates[i] for i in order], cost)


def _slowdown(faster: Probe, slower: Probe) -> float:
    """How much slower ``slower`` ran than ``faster``, as a share (0.3: 30% slower)."""
    return slower.seconds / faster.seconds - 1 if faster.seconds > 0 else 0.0


def order_by_gain_per_cost(base: Probe, probes: Sequence[Probe]) -> list[int]:
    """Indices of ``probes`` (each a candidate kept in float alone), most drift taken off per share
    of speed lost first: gain = base drift - its drift, cost = its slowdown over ``base`` rounded up
    to whole :data:`COST_STEP` steps (at least one). Candidates that take nothing off follow, least drift
    first; ties keep their order."""
    def key(index: int):
        probe = probes[index]
        gain = base.drift - probe.drift
        if gain <= 0:
            return (1, probe.drift, index)
        return (0, -gain / _cost_steps(_slowdown(base, probe)), index)
    return sorted(range(len(probes)), key=key)


def _cost_steps(share: float) -> int:
    """A share of speed (lost, or gained) in whole :data:`COST_STEP` steps, at least one."""
    return max(1, math.ceil(round(share / COST_STEP, 6)))


def _unreachable(judge: DriftJudge, check: BudgetCheck, count: int, remedy: str = FLOAT,
                 whole_model: bool = False) -> str:
    if remedy == SIXTEEN_BIT:
        kept = "groups of tensors in 16 bits"
    elif whole_model:
        kept = "modules in float (every module but one: keeping all of them float leaves no int8)"
    else:
        kept = f"layers in float (the limit is {MAX_FLOAT_SHARE:.0%} of the quantized activations)"
    return (f"backend.quantize.max_drift cannot be met: with the {count} most damaging {kept} the drift on "
            f"{len(judge.pairs)} validation images is {judge.misses(check)}; no artifact written. Loosen the budget, "
            "try another calibrate_mode or build fp16/bf16")


def describe_budget(record: dict, backend: str = "") -> str:
    """One line for a ``build.json`` budget record (``backend_details.plan.budget``) of a ``backend`` build."""
    upper = record.get("drift_upper_bound")  # absent from artifacts built before budgets had a confidence
    drift = ", ".join(f"{key} {record['drift'][key]:.4f}" + (f", bound {upper[key]:.4f}" if upper else "")
                      + f" (<= {bound:g})" for key, bound in record["bounds"].items())
    if upper:
        drift += f" at {record['validation']['confidence']:.0%} confidence"
    if record.get("sixteen_bit_tensors"):
        how = f"gave {len(record['sixteen_bit_tensors'])} tensors 16 bits; {len(record['trials'])} trials"
    elif record.get("float_nodes"):
        how = (f"kept {len(record['float_nodes'])} more nodes in float (estimated speed cost "
               f"{record['estimated_speed_cost']:.0%}); {len(record['trials'])} trials")
    else:
        how = "no layer needed to stay in float"
    return f"budget met on {record['validation']['images']} validation images: {drift}; {how}{_speed_clause(record, backend)}"


# A budgeted int8 build that runs at less than this many times fp32's speed on the validation pictures
# is reported as no faster than fp32 on this CPU.
WORTHWHILE_SPEEDUP = 1.25


def _speed_clause(record: dict, backend: str) -> str:
    speed = record.get("images_per_second") or {}
    if not speed.get("fp32"):  # artifacts built before the judge timed fp32
        return ""
    speedup = speed["final"] / speed["fp32"]
    clause = f"; {speed['final']:.2f} images/s on them, {speedup:.2f}x fp32's {speed['fp32']:.2f}"
    if "sixteen_bit_tensors" in record:
        clause += " (emulated on this CPU: an NPU's speed is another matter)"
    elif speedup < WORTHWHILE_SPEEDUP and not record.get("float_nodes"):
        clause += " -- on this CPU this int8 build is no faster than fp32"
    elif speedup < WORTHWHILE_SPEEDUP:
        clause += " -- on this CPU the layers kept float cost what int8 saves"
        if backend == "onnxruntime":
            # Measured: QLinearConv runs NHWC, a float Conv NCHWc; each float island adds transposes and reorders.
            clause += ("; ONNX Runtime converts the layout around every float layer, OpenVINO's int8 keeps float "
                       "layers at less cost (isnet compare measures both)")
    return clause
