"""LoRA and LyCORIS networks merged into a bundle's weights, as A1111's Lora extension computes them.

A1111 extensions-builtin/Lora: network.py (NetworkModule.calc_scale, finalize_updown, apply_weight_decompose),
network_lora.py, network_hada.py, network_lokr.py, network_ia3.py, network_full.py, lyco_helpers.py;
networks.py (key conversion, the te/unet multiplier choice, summing networks in prompt order).

The exporter records where every Linear/Conv2d weight of the UNet and text encoder sits in the ONNX data files
(export/lora_map.py, `lora_map.json`). A set of networks becomes {component: {initializer: merged weight}}: always
the base weight plus every network's ΔW, computed in float32 from the base (never cumulatively), so switching sets
is exact. The caller builds sessions over the merged initializers (engine/network_sessions.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.embedding_files import EmbeddingFileError, embedding_from_data
from engine.textual_inversion import Embedding

LORA_MAP_NAME = "lora_map.json"
BUNDLE_PREFIX = "bundle_emb."  # textual-inversion embeddings bundled in a LoRA file

# Parts a module key can carry, longest first so that `lora_down.weight` is not read as `weight`.
_PARTS = sorted(
    ["lora_up.weight", "lora_down.weight", "lora_mid.weight", "lora_A.weight", "lora_B.weight", "alpha", "scale",
     "dora_scale", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1",
     "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "weight", "on_input", "diff",
     "diff_b", "w_norm", "b_norm", "bias", "a1.weight", "a2.weight", "b1.weight", "b2.weight", "oft_blocks",
     "oft_diag", "rescale"],
    key=len, reverse=True,
)
# Diffusers/PEFT files name modules by their dotted path under the pipeline component.
_DOTTED_PREFIXES = {"unet.": "lora_unet_", "text_encoder.": "lora_te_", "text_encoder_2.": "lora_te2_"}


class NetworkError(ValueError):
    """A network file that cannot be applied (unknown key layout, a type sdedge does not merge, bad shapes)."""


@dataclass(frozen=True)
class WeightTarget:
    """Where one Linear/Conv2d weight lives in the bundle (a `lora_map.json` entry)."""

    component: str
    initializer: str
    layout: str  # "N" as torch holds it, "T" a 2-D weight stored transposed
    shape: tuple[int, ...]  # torch's shape
    file: str
    offset: int
    length: int

    @property
    def stored_shape(self) -> tuple[int, ...]:
        return self.shape[::-1] if self.layout == "T" else self.shape

    def stored(self, bundle: Path) -> np.ndarray:
        """The base weight as the data file holds it, memory-mapped read-only (no copy: the merge reads it once,
        straight from the page cache, into the buffer that already holds ΔW)."""
        return np.memmap(bundle / self.component / self.file, dtype=np.float32, mode="r", offset=self.offset,
                         shape=self.stored_shape)

    def read(self, bundle: Path) -> np.ndarray:
        """The base weight in torch's shape."""
        stored = self.shape[::-1] if self.layout == "T" else self.shape
        count = self.length // 4
        data = np.fromfile(bundle / self.component / self.file, dtype=np.float32, count=count, offset=self.offset)
        array = data.reshape(stored)
        return array.T if self.layout == "T" else array


@dataclass(frozen=True)
class LoraMap:
    targets: dict[str, WeightTarget]

    @property
    def layers_per_block(self) -> int:
        """Resnets per UNet down block (1 + 3b + j numbering of LDM's input_blocks depends on it)."""
        return sum(f"lora_unet_down_blocks_0_resnets_{j}_conv1" in self.targets for j in range(8)) or 2

    def find(self, module: str) -> tuple[str, WeightTarget] | None:
        """A module key's target: diffusers naming as exported, else its LDM/SGM spelling converted."""
        if module in self.targets:
            return module, self.targets[module]
        for key in ldm_unet_candidates(module, self.layers_per_block):
            if key in self.targets:
                return key, self.targets[key]
        return None

    @classmethod
    def load(cls, bundle: Path) -> LoraMap | None:
        path = Path(bundle) / LORA_MAP_NAME
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        targets = {
            key: WeightTarget(t["component"], t["initializer"], t["layout"], tuple(t["shape"]), t["file"],
                              int(t["offset"]), int(t["length"]))
            for key, t in data["targets"].items()
        }
        return cls(targets)


@dataclass(frozen=True)
class NetworkUse:
    """One network as a prompt asks for it: `<lora:name:te:unet:dyn>`."""

    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None


def split_key(key: str) -> tuple[str, str]:
    """A file key → (module key in kohya form, part)."""
    for part in _PARTS:
        if key.endswith("." + part):
            module = key[: -len(part) - 1]
            break
    else:
        module, _, part = key.partition(".")
    for dotted, prefix in _DOTTED_PREFIXES.items():
        if module.startswith(dotted):
            # diffusers/PEFT layout (A1111 1.10.1 matches none of these keys; sdedge applies them)
            module = prefix + module[len(dotted):].replace(".", "_")
            break
    # kohya writes SD 1.x/2.x text-encoder keys as lora_te_, SDXL's first encoder as lora_te1_
    return module, part


def group_modules(tensors: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        if key.startswith(BUNDLE_PREFIX):
            continue  # a bundled embedding (bundled_embeddings), not a module
        module, part = split_key(key)
        modules.setdefault(module, {})[part] = value
    return modules


def bundled_embedding_data(tensors: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """The `bundle_emb.<name>.<vector key>` entries of a LoRA file as one embedding-file dict per name, in file
    order (A1111 networks.py: load_network). `string_to_param.<k>` becomes {"string_to_param": {k: tensor}}, the
    last such key winning; any other vector key (SDXL's `clip_l`/`clip_g`, a lone tensor) is kept as it is."""
    found: dict[str, dict] = {}
    for key, value in tensors.items():
        if not key.startswith(BUNDLE_PREFIX):
            continue
        name, dot, vector_key = key[len(BUNDLE_PREFIX):].partition(".")
        head, sub_dot, term = vector_key.partition(".")
        if not dot or (head == "string_to_param" and not sub_dot):
            raise NetworkError(f"{key}: expected bundle_emb.<name>.<vectors>")  # A1111: a failed unpacking
        data = found.setdefault(name, {})
        if head == "string_to_param":
            data["string_to_param"] = {term: value}
        else:
            data[vector_key] = value
    return found


def bundled_embeddings(tensors: Mapping[str, np.ndarray], filename: str) -> dict[str, Embedding]:
    """The embeddings bundled in a LoRA file, read as embedding files are (engine/embedding_files.py); one that
    is not an embedding makes the whole file fail, as A1111's load_network does. No hash: the service names each
    after the LoRA that brings it."""
    embeddings = {}
    for name, data in bundled_embedding_data(tensors).items():
        try:
            embeddings[name] = embedding_from_data(data, name, filename=f"{filename}/{name}")
        except EmbeddingFileError as exc:
            raise NetworkError(f"bundled embedding {name!r}: {exc}") from exc
    return embeddings


def _scalar(parts: dict[str, np.ndarray], name: str) -> float | None:
    value = parts.get(name)
    return None if value is None else float(np.asarray(value).reshape(-1)[0])


def _conventional(up: np.ndarray, down: np.ndarray, shape: Sequence[int], dyn: int | None = None,
                  transposed: bool = False) -> np.ndarray:
    """lyco_helpers.rebuild_conventional; `transposed`: ΔWᵀ of a 2-D weight, as downᵀ @ upᵀ (BLAS reads the
    transposed factors in place, so a weight stored transposed gets its ΔW without a transposing copy)."""
    # float32 factors: NumPy has no BLAS for float16, and A1111 casts the factors to the weight's dtype anyway.
    up = up.reshape(up.shape[0], -1).astype(np.float32, copy=False)
    down = down.reshape(down.shape[0], -1).astype(np.float32, copy=False)
    if dyn:
        up, down = up[:, :dyn], down[:dyn, :]
    if transposed:
        return down.T @ up.T
    return (up @ down).reshape(shape)


def _cp(up: np.ndarray, down: np.ndarray, mid: np.ndarray) -> np.ndarray:
    """lyco_helpers.rebuild_cp_decomposition."""
    up = up.reshape(up.shape[0], -1)
    down = down.reshape(down.shape[0], -1)
    return np.einsum("nmkl,in,mj->ijkl", mid, up, down)


def _weight_cp(t: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """lyco_helpers.make_weight_cp: t's first axis pairs with wa (rank × out), its second with wb (rank × in)."""
    temp = np.einsum("ijkl,jr->irkl", t, wb)
    return np.einsum("ijkl,ir->rjkl", temp, wa)


def _kron(shape: Sequence[int], w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """lyco_helpers.make_kron."""
    if w2.ndim == 4:
        w1 = w1[:, :, None, None]
    return np.kron(w1, w2).reshape(shape)


def network_type(parts: dict[str, np.ndarray]) -> str:
    """A1111's detection order: LoRA, LoHa, IA3, LoKr, Full, Norm, GLoRA, OFT."""
    if ("lora_up.weight" in parts and "lora_down.weight" in parts) or (
        "lora_A.weight" in parts and "lora_B.weight" in parts
    ):
        return "lora"
    if all(k in parts for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")):
        return "loha"
    if "weight" in parts and "on_input" in parts:
        return "ia3"
    if ("lokr_w1" in parts or "lokr_w1_a" in parts) and ("lokr_w2" in parts or "lokr_w2_a" in parts):
        return "lokr"
    if "diff" in parts:
        return "full"
    if "w_norm" in parts:
        return "norm"
    if all(k in parts for k in ("a1.weight", "a2.weight", "b1.weight", "b2.weight")):
        return "glora"
    if "oft_blocks" in parts or "oft_diag" in parts:
        return "oft"
    raise NetworkError(f"unrecognised key set {sorted(parts)}")


def module_delta(parts: dict[str, np.ndarray], weight: np.ndarray, multiplier: float,
                 dyn: int | None = None, transposed: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(ΔW in the weight's shape, Δbias or None) of one module, multiplier applied (A1111 NetworkModule).

    `transposed` (2-D weights): ΔWᵀ, C-contiguous, for a weight the bundle stores transposed. The result is always
    a new array the caller may add into."""
    kind = network_type(parts)
    dim: int | None = None
    ex_bias = None
    result_transposed = False
    if kind == "lora":
        up = parts.get("lora_up.weight", parts.get("lora_B.weight"))
        down = parts.get("lora_down.weight", parts.get("lora_A.weight"))
        mid = parts.get("lora_mid.weight")
        dim = down.shape[0]
        shape = [up.shape[0], down.shape[1]]
        if mid is not None:
            updown = _cp(up, down, mid)
        else:
            if down.ndim == 4:
                shape += list(down.shape[2:])
            # DoRA needs ΔW in the weight's layout; a plain 2-D LoRA can be built transposed directly.
            result_transposed = (transposed and weight.ndim == 2 and len(shape) == 2 and "dora_scale" not in parts)
            updown = _conventional(up, down, shape, dyn, transposed=result_transposed)
    elif kind == "loha":
        w1a, w1b, w2a, w2b = (parts[k] for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
        dim = w1b.shape[0]
        shape = [w1a.shape[0], w1b.shape[1]]
        t1, t2 = parts.get("hada_t1"), parts.get("hada_t2")
        if t1 is not None:
            shape = [w1a.shape[1], w1b.shape[1]] + list(t1.shape[2:])
            updown1 = _weight_cp(t1, w1a, w1b)
        else:
            if w1b.ndim == 4:
                shape += list(w1b.shape[2:])
            updown1 = _conventional(w1a, w1b, shape)
        updown2 = _weight_cp(t2, w2a, w2b) if t2 is not None else _conventional(w2a, w2b, shape)
        updown = updown1 * updown2
    elif kind == "lokr":
        w1 = parts.get("lokr_w1")
        if w1 is None:
            w1 = parts["lokr_w1_a"] @ parts["lokr_w1_b"]
            dim = parts["lokr_w1_b"].shape[0]
        w2 = parts.get("lokr_w2")
        if w2 is None:
            dim = parts["lokr_w2_b"].shape[0]
            if "lokr_t2" in parts:
                w2 = _weight_cp(parts["lokr_t2"], parts["lokr_w2_a"], parts["lokr_w2_b"])
            else:
                w2 = parts["lokr_w2_a"] @ parts["lokr_w2_b"]
        shape = list(weight.shape) if weight.ndim == 4 else [w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]]
        updown = _kron(shape, w1, w2)
    elif kind == "ia3":
        w = parts["weight"]
        if _scalar(parts, "on_input"):
            updown = weight * w.reshape((1, -1) + (1,) * (weight.ndim - 2))
        else:
            updown = weight * w.reshape((-1,) + (1,) * (weight.ndim - 1))
    elif kind == "full":
        updown = parts["diff"]
        if "diff_b" in parts:
            ex_bias = parts["diff_b"] * multiplier
    else:
        raise NetworkError(f"{kind.upper()} networks are not supported by sdedge (see docs/compatibility.md)")
    if (weight.ndim == 4 and updown.ndim == 4 and updown.shape[0] == weight.shape[0]
            and updown.shape[1] < weight.shape[1] and updown.shape[2:] == weight.shape[2:]):
        # A 4-channel conv_in LoRA on a 9-channel inpainting UNet: ΔW zero-padded on the extra inputs (A1111).
        updown = np.pad(updown, ((0, 0), (0, weight.shape[1] - updown.shape[1]), (0, 0), (0, 0)))
    if updown.size != weight.size:
        raise NetworkError(f"ΔW of shape {tuple(updown.shape)} does not fit a weight of shape {weight.shape}")
    # A new float32 array in every case (a Full network's `diff` is the file's own tensor: copied), scaled in place.
    updown = updown.reshape(weight.shape[::-1] if result_transposed else weight.shape)
    updown = updown.astype(np.float32, copy=kind == "full" or not updown.flags.c_contiguous)
    # NetworkModule.calc_scale: the file's `scale`, else alpha / dim, else 1.
    scale = _scalar(parts, "scale")
    if scale is None:
        alpha = _scalar(parts, "alpha")
        scale = alpha / dim if alpha is not None and dim else 1.0
    updown *= np.float32(scale)
    if "dora_scale" in parts:
        updown = _weight_decompose(updown, weight, parts["dora_scale"])
    updown *= np.float32(multiplier)
    if transposed and not result_transposed and updown.ndim == 2:
        updown = np.ascontiguousarray(updown.T)
    return updown, ex_bias


def _weight_decompose(updown: np.ndarray, weight: np.ndarray, dora_scale: np.ndarray) -> np.ndarray:
    """DoRA (NetworkModule.apply_weight_decompose): V = W + ΔW, W' = dora_scale · V / ‖V‖ with the norm over every
    axis but the input-channel axis 1."""
    merged = weight + updown
    axes = tuple(a for a in range(merged.ndim) if a != 1)
    norm = np.sqrt(np.sum(merged.astype(np.float64) ** 2, axis=axes, keepdims=True)).astype(np.float32)
    scale = dora_scale.reshape(norm.shape)
    return merged * (scale / norm) - weight


@dataclass(frozen=True)
class LoadedNetwork:
    """A network file's modules, keyed as in `lora_map.json`, and the embeddings bundled in it by name."""

    name: str
    modules: dict[str, dict[str, np.ndarray]]
    embeddings: Mapping[str, Embedding] = field(default_factory=dict)


@dataclass(frozen=True)
class MergeReport:
    applied_modules: int
    unmatched_modules: tuple[str, ...]


def merged_weights(
    bundle: Path, lora_map: LoraMap, networks: Sequence[tuple[LoadedNetwork, NetworkUse]],
    components: Collection[str] | None = None,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, MergeReport]]:
    """{component: {initializer: merged weight in stored layout}} for a set of networks, summed in prompt order
    onto the base weights; and per network, how many of its modules found a target.

    Modules without a target are dropped, as A1111 drops keys it cannot match (listed in the report). A module
    whose multiplier is 0 changes nothing (A1111 adds ΔW·0) and is skipped, so `<lora:x:0:1>` leaves the text
    encoder's weights, and its session, alone. `components`: merge only the weights of these (the report still
    covers every module).

    Cost (what the first switch to a set waits for): ΔW is computed in float32 in the layout the data file stores
    (ΔWᵀ straight from the factors for transposed MatMul weights), accumulated in place, and the base weight is
    added into that same buffer from a read-only memory map: one new array per changed weight, no transposing
    copies. Sums keep A1111's order: ((ΔW₁ + ΔW₂) + …) + W."""
    deltas: dict[str, np.ndarray] = {}
    reports: dict[str, MergeReport] = {}
    for network, use in networks:
        applied = 0
        unmatched: list[str] = []
        for module, parts in network.modules.items():
            found_target = lora_map.find(module)
            if found_target is None:
                unmatched.append(module)
                continue
            key, target = found_target
            applied += 1
            # A1111 network.py: the te multiplier for text-encoder modules, else unet
            multiplier = use.te if key.startswith("lora_te") else use.unet
            if multiplier == 0 or (components is not None and target.component not in components):
                continue
            base = target.stored(bundle).view(np.ndarray)
            transposed = target.layout == "T"
            try:
                delta, ex_bias = module_delta(parts, base.T if transposed else base, multiplier, use.dyn,
                                              transposed=transposed)
            except NetworkError as exc:
                raise NetworkError(f"{network.name}: {module}: {exc}") from exc
            if ex_bias is not None:
                bias_key = key + ".bias"
                bias_target = lora_map.targets.get(bias_key)
                if bias_target is None:
                    raise NetworkError(f"{network.name}: {module}: carries a bias difference, and the bias of "
                                       f"that layer is not in the bundle's map")
                ex_bias = np.asarray(ex_bias, dtype=np.float32).reshape(bias_target.stored_shape)
                if bias_key in deltas:
                    deltas[bias_key] += ex_bias
                else:
                    deltas[bias_key] = ex_bias.copy()
            if key in deltas:
                deltas[key] += delta
            else:
                deltas[key] = delta
        reports[network.name] = MergeReport(applied, tuple(unmatched))
    merged: dict[str, dict[str, np.ndarray]] = {}
    for key in list(deltas):
        target = lora_map.targets[key]
        total = deltas.pop(key)
        np.add(total, target.stored(bundle), out=total)
        merged.setdefault(target.component, {})[target.initializer] = total
    return merged, reports


def _torch_tensors(path: Path) -> dict[str, np.ndarray]:
    """A `.pt`/`.ckpt` network as A1111 reads it (modules/sd_models.py: read_state_dict, a `state_dict` entry
    unwrapped), through engine/torch_pickle.py, which refuses anything but tensors and never runs the file's code;
    fp16 widened like the `.safetensors` loader does."""
    from engine.torch_pickle import TorchFileError, load

    try:
        data = load(path)
    except TorchFileError as exc:
        raise NetworkError(str(exc)) from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise NetworkError(f"{path.name}: not a state dict")
    return {str(k): v.astype(np.float32) if v.dtype == np.float16 else v
            for k, v in data.items() if isinstance(v, np.ndarray)}


def changed_components(lora_map: LoraMap, networks: Sequence[tuple[LoadedNetwork, NetworkUse]]) -> list[str]:
    """The components whose weights a set of networks changes (a matched module with a non-zero multiplier)."""
    found: set[str] = set()
    for network, use in networks:
        for module in network.modules:
            hit = lora_map.find(module)
            if hit is not None and (use.te if hit[0].startswith("lora_te") else use.unet) != 0:
                found.add(hit[1].component)
    return sorted(found)


def load_network(path: Path, name: str | None = None) -> LoadedNetwork:
    """A `.safetensors`, `.pt` or `.ckpt` LoRA/LyCORIS file, its keys grouped by module (kohya form)."""
    from engine.safetensors_file import SafetensorsError, load_file

    path = Path(path)
    if path.suffix.lower() in (".pt", ".ckpt"):
        tensors = _torch_tensors(path)
    else:
        try:
            tensors, _ = load_file(path)
        except (SafetensorsError, OSError) as exc:
            raise NetworkError(str(exc)) from exc
    modules = group_modules(tensors)
    for module, parts in modules.items():
        try:
            network_type(parts)
        except NetworkError as exc:
            raise NetworkError(f"{path.name}: {module}: {exc}") from exc
    try:
        embeddings = bundled_embeddings(tensors, str(path))
    except NetworkError as exc:
        raise NetworkError(f"{path.name}: {exc}") from exc
    return LoadedNetwork(name or path.stem, modules, embeddings)


_RESNET_PARTS = {"in_layers_0": "norm1", "in_layers_2": "conv1", "out_layers_0": "norm2", "out_layers_3": "conv2",
                 "emb_layers_1": "time_emb_proj", "skip_connection": "conv_shortcut"}
_FLAT_LDM = {"input_blocks_0_0": "conv_in", "time_embed_0": "time_embedding_linear_1",
             "time_embed_2": "time_embedding_linear_2", "label_emb_0_0": "add_embedding_linear_1",
             "label_emb_0_2": "add_embedding_linear_2", "out_0": "conv_norm_out", "out_2": "conv_out"}
_RE_LDM = re.compile(r"(input_blocks|output_blocks)_(\d+)_(\d+)(?:_(.*))?$")
_RE_LDM_MIDDLE = re.compile(r"middle_block_(\d+)_(.*)$")


def _resnet_part(rest: str) -> str:
    for ldm, diffusers in _RESNET_PARTS.items():
        if rest == ldm or rest.startswith(ldm + "_"):
            return diffusers + rest[len(ldm):]
    return rest


def ldm_unet_candidates(module: str, layers_per_block: int) -> list[str]:
    """kohya keys in the UNet's LDM/SGM naming (`lora_unet_input_blocks_4_1_…`, what SDXL LoRAs and A1111's
    own key names use) → the diffusers-named keys they may stand for (networks.py: convert_diffusers_name_to_compvis
    in reverse; diffusers lora_conversion_utils: _maybe_map_sgm_blocks_to_diffusers). Several when the name alone
    does not say it (an up block's second module is an attention, or its upsampler when it has none)."""
    if not module.startswith("lora_unet_"):
        return []
    name = module[len("lora_unet_"):]
    for ldm, diffusers in _FLAT_LDM.items():
        if name == ldm or name.startswith(ldm + "_"):
            return ["lora_unet_" + diffusers + name[len(ldm):]]
    if m := _RE_LDM_MIDDLE.match(name):  # middle_block: resnet, attention, resnet
        block, rest = int(m.group(1)), m.group(2)
        if block == 1:
            return [f"lora_unet_mid_block_attentions_0_{rest}"]
        return [f"lora_unet_mid_block_resnets_{block // 2}_{_resnet_part(rest)}"]
    m = _RE_LDM.match(name)
    if m is None:
        return []
    kind, block, inner, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4) or ""
    tail = ("_" + rest) if rest else ""
    per = layers_per_block + 1
    if kind == "input_blocks":
        b, j = (block - 1) // per, (block - 1) % per
        if j == layers_per_block:  # the block's downsampler: input_blocks_{n}_0_op
            return [f"lora_unet_down_blocks_{b}_downsamplers_0_conv"] if rest == "op" else []
        if inner == 0:
            return [f"lora_unet_down_blocks_{b}_resnets_{j}_{_resnet_part(rest)}".rstrip("_")]
        return [f"lora_unet_down_blocks_{b}_attentions_{j}{tail}"]
    b, j = block // per, block % per
    if inner == 0:
        return [f"lora_unet_up_blocks_{b}_resnets_{j}_{_resnet_part(rest)}".rstrip("_")]
    attention = f"lora_unet_up_blocks_{b}_attentions_{j}{tail}"
    upsampler = f"lora_unet_up_blocks_{b}_upsamplers_0{tail}"
    return [attention] if inner == 1 and rest != "conv" else [attention, upsampler]
