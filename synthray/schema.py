"""The run config's schema: every key of `conf/config.yaml` with its type, and the words a choice key takes.

Values live in the YAML files (`conf/config.yaml`, `conf/recipes/`, `experiments/`); the schema holds none (every
field is MISSING), so it checks shape and type without changing what composes. Hydra merges it first
(`defaults: [synthray_schema, ...]`), so an unknown key, a word outside a `Literal`, or text for a whole number
fails at composition. `Number` (int or float, kept as written: artifact keys hash them) and keys that take a
number or a word (`generation.batch_size: auto`) are `Any`: OmegaConf 2.3 has no unions.
"""

from typing import Any, Dict, List, Literal, Optional

from synthray.schema_base import Device, Number, choices, field_type, keys, schema  # noqa: F401 - the schema's API


@schema
class Ray:
    address: Optional[str]
    num_cpus: Optional[int]


@schema
class Data:
    source: Literal["digits", "imagefolder", "parquet"]
    root: Optional[str]
    classes: str
    image_size: Optional[int]
    test_fraction: Number
    control_fraction: Number
    max_per_class: Optional[int]
    on_corrupt: Literal["fail", "skip"]
    image_column: str
    label_column: str


@schema
class Grid:  # an axis takes a list or one name
    generator: Any
    prompt_style: Any
    arch: Any
    probe: Any
    task: Any
    axes: Dict[str, Any]


@schema
class Prompts:
    template: str
    caption_template: str
    captions: Optional[str]
    n_per_class: int


@schema
class CaptionerLocal:
    model: str
    dtype: Literal["auto", "float32", "bfloat16", "float16"]


@schema
class CaptionerOpenAI:
    model: str
    base_url: str
    api_key_env: str
    detail: Optional[Literal["low", "high", "auto"]]
    concurrency: int
    requests_per_minute: Optional[Number]
    timeout_s: Number
    max_attempts: int
    backoff_s: Number
    max_backoff_s: Number


@schema
class Captioner:
    backend: Literal["openai", "local"]
    instruction: str
    per_class: Optional[int]
    min_side: int
    jpeg_quality: int
    temperature: Optional[Number]
    max_tokens: Optional[int]
    shard_size: int
    batch_size: int
    device: Device
    num_actors: int
    max_actors: Optional[int]
    gpus_per_actor: Number
    cpus_per_actor: Number
    local: CaptionerLocal
    openai: CaptionerOpenAI


@schema
class Generation:
    protocol: Literal["model-default", "paper"]
    guidance: Optional[Number]
    steps: Optional[int]
    scheduler: Optional[str]
    batch_size: Any  # a whole number or auto
    overlap: bool
    shard_size: int
    device: Device
    num_actors: int
    max_actors: Optional[int]
    gpus_per_actor: Number
    cpus_per_actor: Number
    cpu_offload: bool
    gpu_memory_gb: Number
    vae_tiling: bool
    channels_last: Any  # true | false | by-pipeline (auto: its earlier spelling)
    compile: Any  # false | true | a torch.compile mode
    compile_scope: Literal["regions", "whole"]
    compile_timeout_s: Optional[Number]
    compile_vae: bool
    compile_cpu: bool
    compile_cache: Literal["storage", "node"]
    fuse_qkv: bool
    attention: Literal["default", "flash", "cudnn", "efficient", "math"]
    max_bad_fraction: Number
    bad_images: Literal["drop", "keep"]
    empty_prompt_at_cfg0: bool
    reencode_split: Literal["control", "train"]
    image_format: Literal["jpeg", "png"]
    jpeg_quality: int
    jpeg_subsampling: Literal["4:4:4", "4:2:2", "4:2:0"]
    dtype: Optional[str]
    stored_size: Optional[int]


@schema
class FrequencyProbe:
    cutoff: Number
    mask: Literal["centred", "paper", "study"]  # study: the earlier spelling of paper
    clip: bool
    size: Optional[int]
    recipe: Optional[Dict[str, Any]]  # merged over the recipe of the probe's models


@schema
class DepthProbe:
    model: str
    batch_size: int
    dtype: Literal["float16", "bfloat16", "float32"]
    input_size: Optional[int]
    square_crop: bool
    output_size: Literal["input", "model"]
    quantize: Literal["round", "floor"]
    recipe: Optional[Dict[str, Any]]
    device: Device
    gpus_per_actor: Number
    gpu_memory_gb: Number
    num_actors: int


@schema
class TextureProbe:
    recipe: Optional[Dict[str, Any]]


@schema
class Probes:
    lowpass: FrequencyProbe
    highpass: FrequencyProbe
    depth: DepthProbe
    texture: TextureProbe


@schema
class Labels:
    model: str
    prompts: str
    classes: Optional[int]
    threshold: Number
    mask_threshold: Number
    dtype: Literal["float16", "bfloat16", "float32"]
    device: Device
    gpus_per_actor: Number
    gpu_memory_gb: Number
    num_actors: int


@schema
class DenseTask:
    model: str
    backbone: Optional[str]
    recipe: Dict[str, Any]
    gpu_memory_gb: Number


@schema
class Tasks:
    detection: DenseTask
    segmentation: DenseTask


@schema
class CutMix:
    prob: Number
    alpha: Number


@schema
class Selection:
    metric: Literal["loss", "accuracy"]
    set: Literal["real-test", "train"]


@schema
class RandomResizedCrop:
    size: int
    scale: Any
    ratio: Any
    interpolation: str
    # true: torchvision's crop then an antialiased resize per image (the study's); false: synthray's earlier
    # one-call grid_sample, which aliases when it shrinks (the stored keys).
    antialias: bool = False


@schema
class GaussianBlur:
    kernel: int
    sigma: Any


@schema
class TrainTransform:
    random_resized_crop: Optional[RandomResizedCrop] = None
    random_crop: Optional[int]
    random_shift: int
    one_of: List[str]
    solarize_threshold: Number
    gaussian_blur: GaussianBlur
    color_jitter: Optional[Any]
    # random: the three adjustments in a new order per image (torchvision's ColorJitter, the study's); fixed:
    # brightness, contrast, saturation (synthray's earlier order, the stored keys).
    color_jitter_order: Literal["random", "fixed"] = "fixed"
    hflip: Number
    vflip: Number


@schema
class TestTransform:
    resize: int
    crop: int
    crop_at: Literal["center", "random"]
    # torchvision: the study's Resize + CenterCrop; round: synthray's earlier geometry (core/images.py GEOMETRIES).
    geometry: Literal["torchvision", "round"]


@schema
class Normalize:
    mean: Any
    std: Any


@schema
class Recipe:  # conf/recipes/<name>.yaml; a key a recipe leaves out stays out (lr_schedule)
    name: str
    epochs: int
    batch_size: int
    optimizer: Literal["adam", "adamw"]
    lr: Number
    weight_decay: Number
    betas: Any
    warmup_epochs: int
    warmup_start_lr: Number
    min_lr: Number
    lr_schedule: Literal["paper", "study", "synthray"]  # study: the earlier spelling of paper
    grad_clip: Optional[Number]
    cutmix: CutMix
    selection: Selection
    selection_fraction: Number
    shuffle: Literal["epoch", "once"]
    load_size: Any  # a whole number of px (each training image squared to it first), or "native" (decoded as is)
    train_transform: TrainTransform
    test_transform: TestTransform
    normalize: Normalize
    seed: int


@schema
class Training:
    num_workers: int
    accumulate: int
    device: Device
    gpus_per_worker: Number
    gpu_memory_gb: Number
    precision: Literal["auto", "bf16", "fp32"]
    sync_bn: bool
    channels_last: Any  # true | false (auto: the earlier spelling of true)
    compile: Any
    max_failures: int
    cache_decoded_gb: Number
    jpeg_decode: Literal["cpu", "gpu"]
    decode_cpus: Optional[int]
    inline_rows: int


@schema
class Encoder:
    model: Optional[str]


@schema
class ClipScore:
    model: Optional[str]
    # torchmetrics: max(100 cos, 0), in [0, 100]; cosine: the raw cosine (the paper's figure, about 0.15-0.17).
    scale: Literal["torchmetrics", "cosine"]


@schema
class Encoders:
    clip: Encoder
    dinov2: Encoder
    inception: Encoder


@schema
class Metrics:
    features: Any  # a list of encoder names
    device: Device
    gpus_per_actor: Number
    gpu_memory_gb: Number
    num_actors: int
    encoders: Encoders
    prdc_k: int
    per_class: bool
    max_samples: Optional[int]
    distance: Literal["euclidean", "cosine"]
    equal_counts: bool
    features_of: Literal["view", "images"]
    clipscore: ClipScore
    geneval: Optional[str]


@schema
class Evaluation:
    device: Device
    gpus_per_actor: Number
    gpu_memory_gb: Number
    num_actors: int
    max_actors: Optional[int]
    batch_size: int
    inline_rows: int


@schema
class Placement:
    by: Literal["none", "labels", "accelerator-type"]
    label: str
    tiers: Any  # a list of GB
    accelerators: Dict[str, Any]  # accelerator type -> GB


@schema
class Hub:
    allow_download: bool
    cache: Optional[str]


@schema
class Tune:
    max_concurrent_trials: int
    max_failures: int
    wait_warning_minutes: Number


@schema
class Config:
    experiment: str
    name: str
    storage: str
    scratch: Optional[str]
    lease_s: Number
    device: Device
    seed: int
    ray: Ray
    data: Data
    grid: Grid
    prompts: Prompts
    captioner: Captioner
    generation: Generation
    generators: Dict[str, Any]  # per kind: fields checked against the kind records (generation/kinds.py)
    probes: Probes
    labels: Labels
    tasks: Tasks
    recipe: Recipe
    training: Training
    metrics: Metrics
    evaluation: Evaluation
    placement: Placement
    hub: Hub
    tracking: Any  # null, one name or a list of mlflow | wandb | tensorboard
    tracking_uri: Optional[str]
    tracking_project: Optional[str]
    tune: Tune
