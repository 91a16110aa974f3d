from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Txt2ImgRequest(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w", "sampler_name", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale", "width", "height", "restore_faces", "tiling", "do_not_save_samples", "do_not_save_grid", "eta", "denoising_strength", "s_min_uncond", "s_churn", "s_tmax", "s_tmin", "s_noise", "override_settings", "override_settings_restore_afterwards", "refiner_checkpoint", "refiner_switch_at", "disable_extra_networks", "firstpass_image", "comments", "force_task_id", "sampler_index", "script_name", "script_args", "send_images", "save_images", "alwayson_scripts", "infotext", "enable_hr", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    STYLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SUBSEED_FIELD_NUMBER: _ClassVar[int]
    SUBSEED_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    SEED_RESIZE_FROM_H_FIELD_NUMBER: _ClassVar[int]
    SEED_RESIZE_FROM_W_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_NAME_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    N_ITER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CFG_SCALE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FACES_FIELD_NUMBER: _ClassVar[int]
    TILING_FIELD_NUMBER: _ClassVar[int]
    DO_NOT_SAVE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DO_NOT_SAVE_GRID_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    DENOISING_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    S_MIN_UNCOND_FIELD_NUMBER: _ClassVar[int]
    S_CHURN_FIELD_NUMBER: _ClassVar[int]
    S_TMAX_FIELD_NUMBER: _ClassVar[int]
    S_TMIN_FIELD_NUMBER: _ClassVar[int]
    S_NOISE_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_SETTINGS_RESTORE_AFTERWARDS_FIELD_NUMBER: _ClassVar[int]
    REFINER_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    REFINER_SWITCH_AT_FIELD_NUMBER: _ClassVar[int]
    DISABLE_EXTRA_NETWORKS_FIELD_NUMBER: _ClassVar[int]
    FIRSTPASS_IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMENTS_FIELD_NUMBER: _ClassVar[int]
    FORCE_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_INDEX_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_NAME_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_ARGS_FIELD_NUMBER: _ClassVar[int]
    SEND_IMAGES_FIELD_NUMBER: _ClassVar[int]
    SAVE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    ALWAYSON_SCRIPTS_FIELD_NUMBER: _ClassVar[int]
    INFOTEXT_FIELD_NUMBER: _ClassVar[int]
    ENABLE_HR_FIELD_NUMBER: _ClassVar[int]
    FIRSTPHASE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    FIRSTPHASE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    HR_SCALE_FIELD_NUMBER: _ClassVar[int]
    HR_UPSCALER_FIELD_NUMBER: _ClassVar[int]
    HR_SECOND_PASS_STEPS_FIELD_NUMBER: _ClassVar[int]
    HR_RESIZE_X_FIELD_NUMBER: _ClassVar[int]
    HR_RESIZE_Y_FIELD_NUMBER: _ClassVar[int]
    HR_CHECKPOINT_NAME_FIELD_NUMBER: _ClassVar[int]
    HR_SAMPLER_NAME_FIELD_NUMBER: _ClassVar[int]
    HR_SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    HR_PROMPT_FIELD_NUMBER: _ClassVar[int]
    HR_NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    styles: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    subseed: int
    subseed_strength: float
    seed_resize_from_h: int
    seed_resize_from_w: int
    sampler_name: str
    scheduler: str
    batch_size: int
    n_iter: int
    steps: int
    cfg_scale: float
    width: int
    height: int
    restore_faces: bool
    tiling: bool
    do_not_save_samples: bool
    do_not_save_grid: bool
    eta: float
    denoising_strength: float
    s_min_uncond: float
    s_churn: float
    s_tmax: float
    s_tmin: float
    s_noise: float
    override_settings: _struct_pb2.Struct
    override_settings_restore_afterwards: bool
    refiner_checkpoint: str
    refiner_switch_at: float
    disable_extra_networks: bool
    firstpass_image: bytes
    comments: _struct_pb2.Struct
    force_task_id: str
    sampler_index: str
    script_name: str
    script_args: _struct_pb2.ListValue
    send_images: bool
    save_images: bool
    alwayson_scripts: _struct_pb2.Struct
    infotext: str
    enable_hr: bool
    firstphase_width: int
    firstphase_height: int
    hr_scale: float
    hr_upscaler: str
    hr_second_pass_steps: int
    hr_resize_x: int
    hr_resize_y: int
    hr_checkpoint_name: str
    hr_sampler_name: str
    hr_scheduler: str
    hr_prompt: str
    hr_negative_prompt: str
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., styles: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., subseed: _Optional[int] = ..., subseed_strength: _Optional[float] = ..., seed_resize_from_h: _Optional[int] = ..., seed_resize_from_w: _Optional[int] = ..., sampler_name: _Optional[str] = ..., scheduler: _Optional[str] = ..., batch_size: _Optional[int] = ..., n_iter: _Optional[int] = ..., steps: _Optional[int] = ..., cfg_scale: _Optional[float] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., restore_faces: _Optional[bool] = ..., tiling: _Optional[bool] = ..., do_not_save_samples: _Optional[bool] = ..., do_not_save_grid: _Optional[bool] = ..., eta: _Optional[float] = ..., denoising_strength: _Optional[float] = ..., s_min_uncond: _Optional[float] = ..., s_churn: _Optional[float] = ..., s_tmax: _Optional[float] = ..., s_tmin: _Optional[float] = ..., s_noise: _Optional[float] = ..., override_settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., override_settings_restore_afterwards: _Optional[bool] = ..., refiner_checkpoint: _Optional[str] = ..., refiner_switch_at: _Optional[float] = ..., disable_extra_networks: _Optional[bool] = ..., firstpass_image: _Optional[bytes] = ..., comments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., force_task_id: _Optional[str] = ..., sampler_index: _Optional[str] = ..., script_name: _Optional[str] = ..., script_args: _Optional[_Union[_struct_pb2.ListValue, _Mapping]] = ..., send_images: _Optional[bool] = ..., save_images: _Optional[bool] = ..., alwayson_scripts: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., infotext: _Optional[str] = ..., enable_hr: _Optional[bool] = ..., firstphase_width: _Optional[int] = ..., firstphase_height: _Optional[int] = ..., hr_scale: _Optional[float] = ..., hr_upscaler: _Optional[str] = ..., hr_second_pass_steps: _Optional[int] = ..., hr_resize_x: _Optional[int] = ..., hr_resize_y: _Optional[int] = ..., hr_checkpoint_name: _Optional[str] = ..., hr_sampler_name: _Optional[str] = ..., hr_scheduler: _Optional[str] = ..., hr_prompt: _Optional[str] = ..., hr_negative_prompt: _Optional[str] = ...) -> None: ...

class Img2ImgRequest(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w", "sampler_name", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale", "width", "height", "restore_faces", "tiling", "do_not_save_samples", "do_not_save_grid", "eta", "denoising_strength", "s_min_uncond", "s_churn", "s_tmax", "s_tmin", "s_noise", "override_settings", "override_settings_restore_afterwards", "refiner_checkpoint", "refiner_switch_at", "disable_extra_networks", "firstpass_image", "comments", "force_task_id", "sampler_index", "script_name", "script_args", "send_images", "save_images", "alwayson_scripts", "infotext", "init_images", "resize_mode", "image_cfg_scale", "mask", "mask_blur_x", "mask_blur_y", "mask_blur", "mask_round", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert", "initial_noise_multiplier", "latent_mask", "include_init_images")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    STYLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SUBSEED_FIELD_NUMBER: _ClassVar[int]
    SUBSEED_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    SEED_RESIZE_FROM_H_FIELD_NUMBER: _ClassVar[int]
    SEED_RESIZE_FROM_W_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_NAME_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    N_ITER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CFG_SCALE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FACES_FIELD_NUMBER: _ClassVar[int]
    TILING_FIELD_NUMBER: _ClassVar[int]
    DO_NOT_SAVE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DO_NOT_SAVE_GRID_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    DENOISING_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    S_MIN_UNCOND_FIELD_NUMBER: _ClassVar[int]
    S_CHURN_FIELD_NUMBER: _ClassVar[int]
    S_TMAX_FIELD_NUMBER: _ClassVar[int]
    S_TMIN_FIELD_NUMBER: _ClassVar[int]
    S_NOISE_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_SETTINGS_RESTORE_AFTERWARDS_FIELD_NUMBER: _ClassVar[int]
    REFINER_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    REFINER_SWITCH_AT_FIELD_NUMBER: _ClassVar[int]
    DISABLE_EXTRA_NETWORKS_FIELD_NUMBER: _ClassVar[int]
    FIRSTPASS_IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMENTS_FIELD_NUMBER: _ClassVar[int]
    FORCE_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_INDEX_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_NAME_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_ARGS_FIELD_NUMBER: _ClassVar[int]
    SEND_IMAGES_FIELD_NUMBER: _ClassVar[int]
    SAVE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    ALWAYSON_SCRIPTS_FIELD_NUMBER: _ClassVar[int]
    INFOTEXT_FIELD_NUMBER: _ClassVar[int]
    INIT_IMAGES_FIELD_NUMBER: _ClassVar[int]
    RESIZE_MODE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_CFG_SCALE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    MASK_BLUR_X_FIELD_NUMBER: _ClassVar[int]
    MASK_BLUR_Y_FIELD_NUMBER: _ClassVar[int]
    MASK_BLUR_FIELD_NUMBER: _ClassVar[int]
    MASK_ROUND_FIELD_NUMBER: _ClassVar[int]
    INPAINTING_FILL_FIELD_NUMBER: _ClassVar[int]
    INPAINT_FULL_RES_FIELD_NUMBER: _ClassVar[int]
    INPAINT_FULL_RES_PADDING_FIELD_NUMBER: _ClassVar[int]
    INPAINTING_MASK_INVERT_FIELD_NUMBER: _ClassVar[int]
    INITIAL_NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    LATENT_MASK_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INIT_IMAGES_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    styles: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    subseed: int
    subseed_strength: float
    seed_resize_from_h: int
    seed_resize_from_w: int
    sampler_name: str
    scheduler: str
    batch_size: int
    n_iter: int
    steps: int
    cfg_scale: float
    width: int
    height: int
    restore_faces: bool
    tiling: bool
    do_not_save_samples: bool
    do_not_save_grid: bool
    eta: float
    denoising_strength: float
    s_min_uncond: float
    s_churn: float
    s_tmax: float
    s_tmin: float
    s_noise: float
    override_settings: _struct_pb2.Struct
    override_settings_restore_afterwards: bool
    refiner_checkpoint: str
    refiner_switch_at: float
    disable_extra_networks: bool
    firstpass_image: bytes
    comments: _struct_pb2.Struct
    force_task_id: str
    sampler_index: str
    script_name: str
    script_args: _struct_pb2.ListValue
    send_images: bool
    save_images: bool
    alwayson_scripts: _struct_pb2.Struct
    infotext: str
    init_images: _containers.RepeatedScalarFieldContainer[bytes]
    resize_mode: int
    image_cfg_scale: float
    mask: bytes
    mask_blur_x: int
    mask_blur_y: int
    mask_blur: int
    mask_round: bool
    inpainting_fill: int
    inpaint_full_res: bool
    inpaint_full_res_padding: int
    inpainting_mask_invert: int
    initial_noise_multiplier: float
    latent_mask: bytes
    include_init_images: bool
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., styles: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., subseed: _Optional[int] = ..., subseed_strength: _Optional[float] = ..., seed_resize_from_h: _Optional[int] = ..., seed_resize_from_w: _Optional[int] = ..., sampler_name: _Optional[str] = ..., scheduler: _Optional[str] = ..., batch_size: _Optional[int] = ..., n_iter: _Optional[int] = ..., steps: _Optional[int] = ..., cfg_scale: _Optional[float] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., restore_faces: _Optional[bool] = ..., tiling: _Optional[bool] = ..., do_not_save_samples: _Optional[bool] = ..., do_not_save_grid: _Optional[bool] = ..., eta: _Optional[float] = ..., denoising_strength: _Optional[float] = ..., s_min_uncond: _Optional[float] = ..., s_churn: _Optional[float] = ..., s_tmax: _Optional[float] = ..., s_tmin: _Optional[float] = ..., s_noise: _Optional[float] = ..., override_settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., override_settings_restore_afterwards: _Optional[bool] = ..., refiner_checkpoint: _Optional[str] = ..., refiner_switch_at: _Optional[float] = ..., disable_extra_networks: _Optional[bool] = ..., firstpass_image: _Optional[bytes] = ..., comments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., force_task_id: _Optional[str] = ..., sampler_index: _Optional[str] = ..., script_name: _Optional[str] = ..., script_args: _Optional[_Union[_struct_pb2.ListValue, _Mapping]] = ..., send_images: _Optional[bool] = ..., save_images: _Optional[bool] = ..., alwayson_scripts: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., infotext: _Optional[str] = ..., init_images: _Optional[_Iterable[bytes]] = ..., resize_mode: _Optional[int] = ..., image_cfg_scale: _Optional[float] = ..., mask: _Optional[bytes] = ..., mask_blur_x: _Optional[int] = ..., mask_blur_y: _Optional[int] = ..., mask_blur: _Optional[int] = ..., mask_round: _Optional[bool] = ..., inpainting_fill: _Optional[int] = ..., inpaint_full_res: _Optional[bool] = ..., inpaint_full_res_padding: _Optional[int] = ..., inpainting_mask_invert: _Optional[int] = ..., initial_noise_multiplier: _Optional[float] = ..., latent_mask: _Optional[bytes] = ..., include_init_images: _Optional[bool] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("data", "mime_type", "index", "seed", "subseed", "infotext")
    DATA_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SUBSEED_FIELD_NUMBER: _ClassVar[int]
    INFOTEXT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    mime_type: str
    index: int
    seed: int
    subseed: int
    infotext: str
    def __init__(self, data: _Optional[bytes] = ..., mime_type: _Optional[str] = ..., index: _Optional[int] = ..., seed: _Optional[int] = ..., subseed: _Optional[int] = ..., infotext: _Optional[str] = ...) -> None: ...

class GenerationInfo(_message.Message):
    __slots__ = ("prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed", "all_subseeds", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size", "restore_faces", "face_restoration_model", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash", "seed_resize_from_w", "seed_resize_from_h", "denoising_strength", "extra_generation_params", "index_of_first_image", "infotexts", "styles", "job_timestamp", "clip_skip", "is_using_inpainting_conditioning", "version", "networks", "embeddings")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    ALL_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    ALL_NEGATIVE_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ALL_SEEDS_FIELD_NUMBER: _ClassVar[int]
    SUBSEED_FIELD_NUMBER: _ClassVar[int]
    ALL_SUBSEEDS_FIELD_NUMBER: _ClassVar[int]
    SUBSEED_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_NAME_FIELD_NUMBER: _ClassVar[int]
    CFG_SCALE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FACES_FIELD_NUMBER: _ClassVar[int]
    FACE_RESTORATION_MODEL_FIELD_NUMBER: _ClassVar[int]
    SD_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SD_MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    SD_VAE_NAME_FIELD_NUMBER: _ClassVar[int]
    SD_VAE_HASH_FIELD_NUMBER: _ClassVar[int]
    SEED_RESIZE_FROM_W_FIELD_NUMBER: _ClassVar[int]
    SEED_RESIZE_FROM_H_FIELD_NUMBER: _ClassVar[int]
    DENOISING_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    EXTRA_GENERATION_PARAMS_FIELD_NUMBER: _ClassVar[int]
    INDEX_OF_FIRST_IMAGE_FIELD_NUMBER: _ClassVar[int]
    INFOTEXTS_FIELD_NUMBER: _ClassVar[int]
    STYLES_FIELD_NUMBER: _ClassVar[int]
    JOB_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    CLIP_SKIP_FIELD_NUMBER: _ClassVar[int]
    IS_USING_INPAINTING_CONDITIONING_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    all_prompts: _containers.RepeatedScalarFieldContainer[str]
    negative_prompt: str
    all_negative_prompts: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    all_seeds: _containers.RepeatedScalarFieldContainer[int]
    subseed: int
    all_subseeds: _containers.RepeatedScalarFieldContainer[int]
    subseed_strength: float
    width: int
    height: int
    sampler_name: str
    cfg_scale: float
    steps: int
    batch_size: int
    restore_faces: bool
    face_restoration_model: str
    sd_model_name: str
    sd_model_hash: str
    sd_vae_name: str
    sd_vae_hash: str
    seed_resize_from_w: int
    seed_resize_from_h: int
    denoising_strength: float
    extra_generation_params: _struct_pb2.Struct
    index_of_first_image: int
    infotexts: _containers.RepeatedScalarFieldContainer[str]
    styles: _containers.RepeatedScalarFieldContainer[str]
    job_timestamp: str
    clip_skip: int
    is_using_inpainting_conditioning: bool
    version: str
    networks: _containers.RepeatedCompositeFieldContainer[Network]
    embeddings: _containers.RepeatedCompositeFieldContainer[EmbeddingUse]
    def __init__(self, prompt: _Optional[str] = ..., all_prompts: _Optional[_Iterable[str]] = ..., negative_prompt: _Optional[str] = ..., all_negative_prompts: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., all_seeds: _Optional[_Iterable[int]] = ..., subseed: _Optional[int] = ..., all_subseeds: _Optional[_Iterable[int]] = ..., subseed_strength: _Optional[float] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., sampler_name: _Optional[str] = ..., cfg_scale: _Optional[float] = ..., steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., restore_faces: _Optional[bool] = ..., face_restoration_model: _Optional[str] = ..., sd_model_name: _Optional[str] = ..., sd_model_hash: _Optional[str] = ..., sd_vae_name: _Optional[str] = ..., sd_vae_hash: _Optional[str] = ..., seed_resize_from_w: _Optional[int] = ..., seed_resize_from_h: _Optional[int] = ..., denoising_strength: _Optional[float] = ..., extra_generation_params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., index_of_first_image: _Optional[int] = ..., infotexts: _Optional[_Iterable[str]] = ..., styles: _Optional[_Iterable[str]] = ..., job_timestamp: _Optional[str] = ..., clip_skip: _Optional[int] = ..., is_using_inpainting_conditioning: _Optional[bool] = ..., version: _Optional[str] = ..., networks: _Optional[_Iterable[_Union[Network, _Mapping]]] = ..., embeddings: _Optional[_Iterable[_Union[EmbeddingUse, _Mapping]]] = ...) -> None: ...

class EmbeddingUse(_message.Message):
    __slots__ = ("name", "hash")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    name: str
    hash: str
    def __init__(self, name: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class Network(_message.Message):
    __slots__ = ("name", "hash", "te", "unet", "dyn")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    TE_FIELD_NUMBER: _ClassVar[int]
    UNET_FIELD_NUMBER: _ClassVar[int]
    DYN_FIELD_NUMBER: _ClassVar[int]
    name: str
    hash: str
    te: float
    unet: float
    dyn: int
    def __init__(self, name: _Optional[str] = ..., hash: _Optional[str] = ..., te: _Optional[float] = ..., unet: _Optional[float] = ..., dyn: _Optional[int] = ...) -> None: ...

class GenerationResponse(_message.Message):
    __slots__ = ("images", "info", "info_json", "parameters", "task_id", "interrupted")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    info: GenerationInfo
    info_json: str
    parameters: _struct_pb2.Struct
    task_id: str
    interrupted: bool
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., info: _Optional[_Union[GenerationInfo, _Mapping]] = ..., info_json: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., task_id: _Optional[str] = ..., interrupted: _Optional[bool] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("txt2img", "img2img", "preview_every_n_steps")
    TXT2IMG_FIELD_NUMBER: _ClassVar[int]
    IMG2IMG_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_EVERY_N_STEPS_FIELD_NUMBER: _ClassVar[int]
    txt2img: Txt2ImgRequest
    img2img: Img2ImgRequest
    preview_every_n_steps: int
    def __init__(self, txt2img: _Optional[_Union[Txt2ImgRequest, _Mapping]] = ..., img2img: _Optional[_Union[Img2ImgRequest, _Mapping]] = ..., preview_every_n_steps: _Optional[int] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("task_id", "queued", "progress", "image", "done")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    queued: Queued
    progress: Progress
    image: Image
    done: Done
    def __init__(self, task_id: _Optional[str] = ..., queued: _Optional[_Union[Queued, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., done: _Optional[_Union[Done, _Mapping]] = ...) -> None: ...

class Queued(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("job_no", "job_count", "sampling_step", "sampling_steps", "progress", "eta_relative", "preview")
    JOB_NO_FIELD_NUMBER: _ClassVar[int]
    JOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_STEP_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_STEPS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ETA_RELATIVE_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    job_no: int
    job_count: int
    sampling_step: int
    sampling_steps: int
    progress: float
    eta_relative: float
    preview: Image
    def __init__(self, job_no: _Optional[int] = ..., job_count: _Optional[int] = ..., sampling_step: _Optional[int] = ..., sampling_steps: _Optional[int] = ..., progress: _Optional[float] = ..., eta_relative: _Optional[float] = ..., preview: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class Done(_message.Message):
    __slots__ = ("info", "info_json", "parameters", "interrupted")
    INFO_FIELD_NUMBER: _ClassVar[int]
    INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    info: GenerationInfo
    info_json: str
    parameters: _struct_pb2.Struct
    interrupted: bool
    def __init__(self, info: _Optional[_Union[GenerationInfo, _Mapping]] = ..., info_json: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., interrupted: _Optional[bool] = ...) -> None: ...

class InterruptRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class InterruptResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SkipRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SkipResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetProgressRequest(_message.Message):
    __slots__ = ("skip_current_image",)
    SKIP_CURRENT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    skip_current_image: bool
    def __init__(self, skip_current_image: _Optional[bool] = ...) -> None: ...

class ProgressState(_message.Message):
    __slots__ = ("skipped", "interrupted", "stopping_generation", "job", "job_count", "job_timestamp", "job_no", "sampling_step", "sampling_steps")
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    STOPPING_GENERATION_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    JOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    JOB_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    JOB_NO_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_STEP_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_STEPS_FIELD_NUMBER: _ClassVar[int]
    skipped: bool
    interrupted: bool
    stopping_generation: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int
    def __init__(self, skipped: _Optional[bool] = ..., interrupted: _Optional[bool] = ..., stopping_generation: _Optional[bool] = ..., job: _Optional[str] = ..., job_count: _Optional[int] = ..., job_timestamp: _Optional[str] = ..., job_no: _Optional[int] = ..., sampling_step: _Optional[int] = ..., sampling_steps: _Optional[int] = ...) -> None: ...

class GetProgressResponse(_message.Message):
    __slots__ = ("progress", "eta_relative", "state", "current_image", "textinfo", "task_id", "queue_length")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ETA_RELATIVE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    TEXTINFO_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: Image
    textinfo: str
    task_id: str
    queue_length: int
    def __init__(self, progress: _Optional[float] = ..., eta_relative: _Optional[float] = ..., state: _Optional[_Union[ProgressState, _Mapping]] = ..., current_image: _Optional[_Union[Image, _Mapping]] = ..., textinfo: _Optional[str] = ..., task_id: _Optional[str] = ..., queue_length: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Model(_message.Message):
    __slots__ = ("title", "model_name", "hash", "sha256", "filename", "config")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    title: str
    model_name: str
    hash: str
    sha256: str
    filename: str
    config: str
    def __init__(self, title: _Optional[str] = ..., model_name: _Optional[str] = ..., hash: _Optional[str] = ..., sha256: _Optional[str] = ..., filename: _Optional[str] = ..., config: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class ListSamplersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Sampler(_message.Message):
    __slots__ = ("name", "aliases", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    options: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListSamplersResponse(_message.Message):
    __slots__ = ("samplers",)
    SAMPLERS_FIELD_NUMBER: _ClassVar[int]
    samplers: _containers.RepeatedCompositeFieldContainer[Sampler]
    def __init__(self, samplers: _Optional[_Iterable[_Union[Sampler, _Mapping]]] = ...) -> None: ...

class ListSchedulersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Scheduler(_message.Message):
    __slots__ = ("name", "label", "aliases", "default_rho", "need_inner_model")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RHO_FIELD_NUMBER: _ClassVar[int]
    NEED_INNER_MODEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    label: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    default_rho: float
    need_inner_model: bool
    def __init__(self, name: _Optional[str] = ..., label: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., default_rho: _Optional[float] = ..., need_inner_model: _Optional[bool] = ...) -> None: ...

class ListSchedulersResponse(_message.Message):
    __slots__ = ("schedulers",)
    SCHEDULERS_FIELD_NUMBER: _ClassVar[int]
    schedulers: _containers.RepeatedCompositeFieldContainer[Scheduler]
    def __init__(self, schedulers: _Optional[_Iterable[_Union[Scheduler, _Mapping]]] = ...) -> None: ...

class GetOptionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetOptionsResponse(_message.Message):
    __slots__ = ("options",)
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    options: _struct_pb2.Struct
    def __init__(self, options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class SetOptionsRequest(_message.Message):
    __slots__ = ("options",)
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    options: _struct_pb2.Struct
    def __init__(self, options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class SetOptionsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PngInfoRequest(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    def __init__(self, image: _Optional[bytes] = ...) -> None: ...

class PngInfoResponse(_message.Message):
    __slots__ = ("info", "items", "parameters")
    INFO_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    info: str
    items: _struct_pb2.Struct
    parameters: _struct_pb2.Struct
    def __init__(self, info: _Optional[str] = ..., items: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ListVaesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Vae(_message.Message):
    __slots__ = ("model_name", "filename")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    filename: str
    def __init__(self, model_name: _Optional[str] = ..., filename: _Optional[str] = ...) -> None: ...

class ListVaesResponse(_message.Message):
    __slots__ = ("vaes",)
    VAES_FIELD_NUMBER: _ClassVar[int]
    vaes: _containers.RepeatedCompositeFieldContainer[Vae]
    def __init__(self, vaes: _Optional[_Iterable[_Union[Vae, _Mapping]]] = ...) -> None: ...
