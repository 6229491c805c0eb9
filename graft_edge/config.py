"""Frozen configuration dataclasses and the named presets (rgbnt100, rgbn300, synthetic).

Configs are plain data passed explicitly; YAML is read only at the CLI edge
(`config_from_dict` / `config_to_dict` are the bridge).
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Mapping

from graft_edge.errors import GraftError

MODALITIES: tuple[str, ...] = ("rgb", "nir", "tir")
FUSIONS: tuple[str, ...] = ("token", "cls", "avg", "multistream")
TRIPLET_COMBOS: tuple[str, ...] = ("FFD", "DDD", "FFF", "FDD", "DFF", "DFD", "DDF", "FDF")
INT_LIMIT = 2**63 - 1  # an integer key fits in 64 bits (sizes and counts reach C code as int64)
SEED_LIMIT = 2**32 - 1  # seeds: NumPy's range (derived seeds, seed x 10007 + step, stay within 64 bits)
CENTER_MODES: tuple[str, ...] = ("learned", "fixed")  # center-loss centers: trained from ~0, or the official fixed N(0, 1)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a GraFT model (paper §3)."""

    backbone: str = "deit_base_distilled_patch16_224"  # any timm ViT name; the authors used distilled DeiT-B (198 tokens)
    backbone_args: Mapping[str, Any] = field(default_factory=dict)  # extra timm kwargs (tiny ViTs)
    modalities: tuple[str, ...] = MODALITIES
    img_size: tuple[int, int] = (224, 224)  # (H, W) fed to the backbone
    num_ids: int = 50  # classifier width (training identities)
    pretrained: bool = True
    pretrained_file: str | None = None  # local weights instead of the timm hub
    fusion: str = "token"  # token (GraFT) | cls | avg (Table 5 vanilla fusion) | multistream (Tables 1-2 baseline)
    enc_heads: int = 8
    enc_ff: int = 2048
    enc_dropout: float = 0.1
    data_token_index: int = 0  # data token used as "D" in the triplet combos
    neck_feat: str = "before"  # inference embedding: "before" or "after" the BNNeck
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class DataConfig:
    """How images are read, augmented and batched."""

    ids_per_batch: int = 13  # P of the P x K identity-balanced sampler
    instances_per_id: int = 8  # K: positives per anchor are K - 1 (13 x 8 = 104 = official 26 per GPU x 4 GPUs)
    # Each training image is an anchor this many times per epoch (official num_triplet_samples: 8): an epoch is
    # ceil(images x anchor_repeats / (P x K)) batches and P x K is the global batch, split over the processes.
    # 0: one pass over the images in P x K chunks per process (global batch = processes x P x K).
    anchor_repeats: int = 8
    num_workers: int = 2
    hflip: float = 0.5
    vflip: float = 0.5
    erase: float = 0.5
    eval_batch_size: int = 64
    # training ids held out for validation (model selection, tuning); official code: train_ratio 0.8. 0 disables
    val_fraction: float = 0.2
    val_seed: int = 0  # which ids are held out; fixed apart from train.seed so seeds compare on one val set
    # images of every training id added to the validation gallery as distractors (never positives), so that
    # validation ranks the held-out ids among as many identities as the test gallery; 0: held-out ids only
    val_distractors: int = 16


@dataclass(frozen=True)
class LossConfig:
    """Weights of eq. 10 and the triplet token combination (Table 8)."""

    alpha: float = 0.5  # triplet
    beta: float = 0.0  # center
    gamma: float = 0.5  # cross-entropy
    combo: str = "FFD"
    mining: str = "random"  # random (paper, official code) | hard (batch-hard, an option)
    triplets_per_anchor: int = 8  # random triplets drawn per anchor (official num_triplet_samples: 8)
    label_smoothing: float = 0.0
    centers: str = "learned"  # learned (SGD at center_lr from ~0) | fixed (the official code: N(0, 1), never trained)


@dataclass(frozen=True)
class StageConfig:
    """One training stage (paper §5.2)."""

    epochs: int = 40
    lr: float = 2.54e-5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.839, 0.978)
    schedule: str = "warmup_sqrt"  # warmup_sqrt | constant
    warmup_steps: int = 500
    cooldown_frac: float = 0.1
    freeze_backbone: bool = True
    center_lr: float = 0.5
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass(frozen=True)
class TrainConfig:
    """Two-stage training recipe plus evaluation cadence."""

    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(
        default_factory=lambda: StageConfig(
            epochs=60, lr=5e-6, weight_decay=1.3e-3, schedule="constant", freeze_backbone=False,
            loss=LossConfig(beta=0.0005, label_smoothing=0.1),
        )
    )
    eval_every: int = 5  # epochs
    seed: int = 0
    amp: bool = True  # bf16 autocast on GPUs
    checkpoint_every: int = 1  # epochs
    # Missing-sensor training: the probability that a training sample loses a random non-empty strict subset of
    # its modalities (uniform over those subsets), masked out through the presence mask exported graphs take.
    # 0 (the authors' recipe) in every preset but the *-robust ones.
    modality_dropout: float = 0.0
    # A trained checkpoint (same modalities and training ids) distilled into the model at every step of both
    # stages, seeing every sensor while the student sees its dropped view (distill.DistillConfig's weights).
    teacher_file: str | None = None


@dataclass(frozen=True)
class GraftConfig:
    """Everything a run needs: model, data, training."""

    preset: str = "rgbnt100"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _synthetic() -> GraftConfig:
    tiny = {"patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4, "mlp_ratio": 4.0}
    # The tiny ViT is not pretrained, so stage 1 trains the backbone too (freeze_backbone=False);
    # --set train.stage1.freeze_backbone=true gives the paper's frozen stage 1. From scratch it needs a
    # high lr and ~500 steps: 20 + 4 epochs of 24 batches train in a few minutes on 2 CPU cores.
    # Batch-hard mining: the tiny from-scratch ViT was tuned with it (the rgbnt100/rgbn300 presets use random triplets).
    stage1 = StageConfig(epochs=20, lr=5e-3, weight_decay=0.05, warmup_steps=50, freeze_backbone=False,
                         loss=LossConfig(mining="hard", triplets_per_anchor=1))
    stage2 = StageConfig(
        epochs=4, lr=5e-4, weight_decay=1e-3, schedule="constant", freeze_backbone=False,
        loss=LossConfig(beta=0.0005, label_smoothing=0.1, mining="hard", triplets_per_anchor=1),
    )
    return GraftConfig(
        preset="synthetic",
        model=ModelConfig(
            backbone="vit_tiny_patch16_224", backbone_args=tiny, img_size=(32, 64), num_ids=32,
            pretrained=False, enc_heads=4, enc_ff=128, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        ),
        # no vertical flips and lighter erasing: upside-down cars and erased cues slow the tiny ViT down
        data=DataConfig(ids_per_batch=8, instances_per_id=4, anchor_repeats=0, num_workers=0, vflip=0.0, erase=0.25,
                        eval_batch_size=128),
        train=TrainConfig(stage1=stage1, stage2=stage2, eval_every=4, amp=False),
    )


ROBUST_DROPOUT = 0.5  # train.modality_dropout of the *-robust presets: half the samples lose some sensors


def _robust(base: GraftConfig, preset: str) -> GraftConfig:
    """`base` trained to ride out missing sensors (train.modality_dropout on), under its own preset name."""
    return replace(base, preset=preset, train=replace(base.train, modality_dropout=ROBUST_DROPOUT))


def _rgbn300() -> GraftConfig:
    base = GraftConfig(preset="rgbn300")
    return replace(base, model=replace(base.model, modalities=("rgb", "nir"), num_ids=150))


# timm's pretrained configs: vit_base_patch16_clip_224.openai (OpenAI CLIP statistics), vit_base_patch14_dinov2
# (ImageNet statistics); tests/test_backbones.py checks these against timm.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _rgbnt100_on(preset: str, backbone: str, mean: tuple[float, float, float],
                 std: tuple[float, float, float]) -> GraftConfig:
    """The rgbnt100 recipe on another timm ViT, with that backbone's normalisation (recipe not re-tuned)."""
    base = GraftConfig(preset=preset)
    return replace(base, model=replace(base.model, backbone=backbone, mean=mean, std=std))


PRESETS = {
    "rgbnt100": lambda: GraftConfig(preset="rgbnt100"),
    "rgbn300": _rgbn300,
    "rgbnt100-dinov2": lambda: _rgbnt100_on("rgbnt100-dinov2", "vit_base_patch14_dinov2", IMAGENET_MEAN, IMAGENET_STD),
    "rgbnt100-clip": lambda: _rgbnt100_on("rgbnt100-clip", "vit_base_patch16_clip_224", OPENAI_CLIP_MEAN,
                                          OPENAI_CLIP_STD),
    "synthetic": _synthetic,
    "rgbnt100-robust": lambda: _robust(GraftConfig(), "rgbnt100-robust"),
    "synthetic-robust": lambda: _robust(_synthetic(), "synthetic-robust"),
}


def get_preset(name: str) -> GraftConfig:
    """The named preset; raises GraftError listing the known names."""
    if name not in PRESETS:
        raise GraftError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def parse_modalities(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """'rgb,nir' -> ('rgb', 'nir') in canonical order; rejects unknown or repeated names."""
    names = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    bad = [n for n in names if n not in MODALITIES]
    if bad or not names:
        raise GraftError(
            f"unknown modality {bad[0] if bad else text!r}: expected a comma-separated subset of {','.join(MODALITIES)}"
        )
    if len(set(names)) != len(names):
        raise GraftError(f"modality listed twice in {text!r}")
    return tuple(m for m in MODALITIES if m in names)


def modality_subsets(modalities: tuple[str, ...] | list[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of `modalities`, smallest first, each in the given order (rgb, nir, ..., rgb+nir, ...)."""
    mods = tuple(modalities)
    return [sub for k in range(1, len(mods) + 1) for sub in itertools.combinations(mods, k)]


def validate(cfg: GraftConfig) -> GraftConfig:
    """Check cross-field constraints; returns cfg unchanged or raises GraftError."""
    m = cfg.model
    parse_modalities(m.modalities)
    if m.fusion not in FUSIONS:
        raise GraftError(f"model.fusion={m.fusion!r}: expected one of {', '.join(FUSIONS)}")
    if m.neck_feat not in ("before", "after"):
        raise GraftError(f"model.neck_feat={m.neck_feat!r}: expected 'before' or 'after'")
    for st_name in ("stage1", "stage2"):
        st: StageConfig = getattr(cfg.train, st_name)
        if st.loss.combo not in TRIPLET_COMBOS:
            raise GraftError(f"train.{st_name}.loss.combo={st.loss.combo!r}: expected one of {', '.join(TRIPLET_COMBOS)}")
        if st.loss.centers not in CENTER_MODES:
            raise GraftError(f"train.{st_name}.loss.centers={st.loss.centers!r}: expected one of {', '.join(CENTER_MODES)}")
        if st.loss.mining not in ("hard", "random"):
            raise GraftError(f"train.{st_name}.loss.mining={st.loss.mining!r}: expected 'hard' or 'random'")
        if st.schedule not in ("warmup_sqrt", "constant"):
            raise GraftError(f"train.{st_name}.schedule={st.schedule!r}: expected 'warmup_sqrt' or 'constant'")
    if cfg.data.instances_per_id < 2:
        raise GraftError("data.instances_per_id must be >= 2 (a positive per anchor is needed)")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise GraftError(f"data.val_fraction={cfg.data.val_fraction}: expected a fraction in [0, 1) (0 disables validation)")
    if cfg.data.ids_per_batch < 2:
        raise GraftError("data.ids_per_batch must be >= 2 (a negative per anchor is needed)")
    _check_numbers(cfg)
    _check_model_shape(cfg.model)
    _check_modality_dropout(cfg)
    if m.pretrained_file and not m.pretrained:
        raise GraftError(f"model.pretrained_file={m.pretrained_file!r} is set but model.pretrained is false: "
                         "pass --pretrained (or set model.pretrained=true) to load it, or drop the file")
    return cfg


# ---------------------------------------------------------------- numeric ranges and shapes

# (key, lowest, highest, lowest allowed itself, highest allowed itself); None: unbounded on that side
_RANGES: tuple[tuple[str, float | None, float | None, bool, bool], ...] = (
    ("model.num_ids", 1, None, True, True), ("model.enc_heads", 1, None, True, True),
    ("model.enc_ff", 1, None, True, True), ("model.enc_dropout", 0, 1, True, False),
    ("model.data_token_index", 0, None, True, True),
    ("data.num_workers", 0, None, True, True), ("data.val_distractors", 0, None, True, True),
    ("data.anchor_repeats", 0, None, True, True), ("data.eval_batch_size", 1, None, True, True),
    ("data.hflip", 0, 1, True, True), ("data.vflip", 0, 1, True, True), ("data.erase", 0, 1, True, True),
    ("train.eval_every", 0, None, True, True), ("train.checkpoint_every", 0, None, True, True),
    ("train.seed", 0, SEED_LIMIT, True, True), ("data.val_seed", 0, SEED_LIMIT, True, True), ("train.modality_dropout", 0, 1, True, True),
)
_STAGE_RANGES: tuple[tuple[str, float | None, float | None, bool, bool], ...] = (
    ("epochs", 0, None, True, True), ("lr", 0, None, True, True), ("weight_decay", 0, None, True, True),
    ("warmup_steps", 0, None, True, True), ("cooldown_frac", 0, 1, True, True), ("center_lr", 0, None, True, True),
    ("loss.alpha", 0, None, True, True), ("loss.beta", 0, None, True, True), ("loss.gamma", 0, None, True, True),
    ("loss.label_smoothing", 0, 1, True, False), ("loss.triplets_per_anchor", 1, None, True, True),
)


def _check_modality_dropout(cfg: GraftConfig) -> None:
    """Modality dropout needs a sensor to drop and a model that can mask one out per sample."""
    p, m = cfg.train.modality_dropout, cfg.model
    if p > 0 and len(m.modalities) < 2:
        raise GraftError(f"train.modality_dropout={p}: model.modalities={','.join(m.modalities)} has a single "
                         "modality, none can be dropped (set it to 0)")
    if p > 0 and m.fusion != "token":
        raise GraftError(f"train.modality_dropout={p}: model.fusion={m.fusion!r} cannot mask a modality per sample "
                         "(only fusion=token models can; set it to 0)")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _check_range(key: str, value: Any, lo: float | None, hi: float | None, lo_ok: bool, hi_ok: bool) -> None:
    """GraftError naming the key when value is NaN/inf or outside its range."""
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        bad = not math.isfinite(float(v))
        bad = bad or (lo is not None and (v < lo or (v == lo and not lo_ok)))
        bad = bad or (hi is not None and (v > hi or (v == hi and not hi_ok)))
        if bad:
            low = "" if lo is None else f"{'>=' if lo_ok else '>'} {lo if isinstance(lo, int) else f'{lo:g}'}"
            high = "" if hi is None else f"{'<=' if hi_ok else '<'} {hi if isinstance(hi, int) else f'{hi:g}'}"
            raise GraftError(f"{key}={value!r}: expected a finite number {' and '.join(x for x in (low, high) if x)}")


def _check_numbers(cfg: GraftConfig) -> None:
    """Every numeric field in its range (finite, signs, probabilities), each error naming its key."""
    for key, *bounds in _RANGES:
        _check_range(key, _get(cfg, key), *bounds)
    _check_range("model.mean", cfg.model.mean, None, None, True, True)
    _check_range("model.std", cfg.model.std, 0, None, False, True)
    _check_range("model.img_size", cfg.model.img_size, 1, None, True, True)
    for name in ("stage1", "stage2"):
        st = getattr(cfg.train, name)
        for key, *bounds in _STAGE_RANGES:
            _check_range(f"train.{name}.{key}", _get(st, key), *bounds)
        _check_range(f"train.{name}.betas", st.betas, 0, 1, True, False)
        if st.loss.beta > 0 and st.loss.centers == "learned" and st.center_lr <= 0:
            raise GraftError(f"train.{name}.center_lr={st.center_lr!r}: the center loss is on (loss.beta > 0), "
                             "so it needs a positive center_lr")


_WIDTHS = {"tiny": 192, "small": 384, "base": 768, "large": 1024, "huge": 1280, "giant": 1408}


def backbone_geometry(m: ModelConfig) -> tuple[int | None, int | None]:
    """(token width, patch size) of the backbone from backbone_args or its timm name; None where unknown."""
    args = dict(m.backbone_args)
    width = args.get("embed_dim")
    if width is None:
        width = next((w for size, w in _WIDTHS.items() if f"_{size}_" in f"_{m.backbone}_"), None)
    patch = args.get("patch_size")
    if patch is None:
        found = re.search(r"patch(\d+)", m.backbone)
        patch = int(found.group(1)) if found else None
    return (int(width) if width else None), (int(patch) if patch else None)


def _check_model_shape(m: ModelConfig) -> None:
    """Heads divide the width, the image divides into patches, the data token exists."""
    width, patch = backbone_geometry(m)
    if width is not None and width % m.enc_heads:
        raise GraftError(f"model.enc_heads={m.enc_heads}: must divide the backbone's token width {width} "
                         f"(e.g. {', '.join(str(h) for h in (1, 2, 4, 8, 12, 16) if width % h == 0)})")
    if patch is not None:
        h, w = m.img_size
        if h % patch or w % patch:
            raise GraftError(f"model.img_size={list(m.img_size)}: height and width must be multiples of the "
                             f"backbone's patch size {patch}")
        if m.data_token_index >= (h // patch) * (w // patch):
            raise GraftError(f"model.data_token_index={m.data_token_index}: the backbone has only "
                             f"{(h // patch) * (w // patch)} patch tokens at img_size {list(m.img_size)}")


# ---------------------------------------------------------------- dict / YAML bridge

def config_to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain dicts/lists (YAML- and torch.load(weights_only)-safe)."""
    if is_dataclass(obj):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): config_to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [config_to_dict(v) for v in obj]
    return obj


def _coerce(value: Any, target: Any, where: str) -> Any:
    """Convert a plain value to the type of `target` (the default it replaces)."""
    if is_dataclass(target):
        if not isinstance(value, Mapping):
            raise GraftError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(type(target), value, where, base=target)
    if isinstance(target, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise GraftError(f"{where}: expected true/false, got {value!r}")
    if isinstance(target, int) and not isinstance(target, bool):
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = int(value)
        except (TypeError, ValueError, OverflowError):
            raise GraftError(f"{where}: expected an integer, got {value!r}") from None
        if abs(number) > INT_LIMIT:
            raise GraftError(f"{where}={number}: expected an integer of at most {INT_LIMIT} in size")
        return number
    if isinstance(target, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError, OverflowError):
            raise GraftError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(target, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise GraftError(f"{where}: expected a list, got {value!r}")
        if target and len(target) in (2, 3) and len(value) != len(target) and not isinstance(target[0], str):
            raise GraftError(f"{where}: expected {len(target)} values, got {len(value)}")
        proto = target[0] if target else None
        return tuple(_coerce(v, proto, where) if proto is not None else v for v in value)
    if isinstance(target, Mapping):
        if not isinstance(value, Mapping):
            raise GraftError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(target, str):
        return str(value)
    return value  # None-typed optional fields take the value as given


def _from_dict(cls: type, data: Mapping[str, Any], where: str, base: Any = None) -> Any:
    base = base if base is not None else cls()
    known = {f.name for f in fields(cls)}
    unknown = [k for k in data if k not in known]
    if unknown:
        prefix = f"{where}." if where else ""
        raise GraftError(f"unknown config key {prefix}{unknown[0]!r}: expected one of {', '.join(sorted(known))}")
    changes = {
        k: _coerce(v, getattr(base, k), f"{where}.{k}" if where else k) for k, v in data.items()
    }
    return replace(base, **changes)


_PRE_VAL_KEYS = {"ids_per_batch", "instances_per_id", "num_workers", "hflip", "vflip", "erase", "eval_batch_size"}


# What a full config written before a key existed meant: no validation split (every training id), one pass
# over the images per epoch with the P x K batch per process, one random triplet per anchor, no validation
# distractors.
_LEGACY_DATA = {"val_fraction": 0.0, "anchor_repeats": 0, "val_distractors": 0}
_LEGACY_LOSS = {"triplets_per_anchor": 1}


def _legacy(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """A full config written before a key existed keeps its old meaning (see _LEGACY_DATA / _LEGACY_LOSS)."""
    out = dict(data)
    section = data.get("data")
    if isinstance(section, Mapping) and _PRE_VAL_KEYS <= set(section):
        out["data"] = {**{k: v for k, v in _LEGACY_DATA.items() if k not in section}, **section}
    train = data.get("train")
    if isinstance(train, Mapping):
        stages = {}
        for name in ("stage1", "stage2"):
            stage = train.get(name)
            loss = stage.get("loss") if isinstance(stage, Mapping) else None
            if isinstance(loss, Mapping) and "mining" in loss and "combo" in loss:
                stages[name] = {**stage, "loss": {**{k: v for k, v in _LEGACY_LOSS.items() if k not in loss}, **loss}}
        out["train"] = {**train, **stages}
    return out


def config_from_dict(data: Mapping[str, Any]) -> GraftConfig:
    """Build a GraftConfig from a plain dict, starting from the preset it names."""
    preset = str(data.get("preset", "rgbnt100"))
    return validate(_from_dict(GraftConfig, _legacy(data), "", base=get_preset(preset)))


def apply_overrides(cfg: GraftConfig, sets: list[str] | tuple[str, ...]) -> GraftConfig:
    """Apply `key.path=value` overrides (the CLI's --set), type-checked against the defaults."""
    import yaml

    data = config_to_dict(cfg)
    for item in sets:
        if "=" not in item:
            raise GraftError(f"--set {item!r}: expected KEY=VALUE, e.g. train.stage1.epochs=5")
        key, raw = item.split("=", 1)
        node: Any = data
        parts = key.strip().split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                raise GraftError(f"--set {key!r}: unknown config key {'.'.join(parts[: i + 1])!r}")
            if i == len(parts) - 1:
                try:
                    node[part] = yaml.safe_load(raw) if raw.strip() else raw
                except yaml.YAMLError:
                    node[part] = raw
            else:
                node = node[part]
    return config_from_dict(data)
