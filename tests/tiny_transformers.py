"""Every image-classification family of transformers' `AutoModelForImageClassification` mapping as a tiny model
built offline from its config (random weights, 32x32 inputs, a few thousand to a few hundred thousand parameters):
what the head-handling code must work on, family by family."""

import torch
from transformers import AutoConfig, AutoModelForImageClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from hf_pbu.models import UNSUPPORTED_MODEL_TYPES

IMAGE_SIZE = 32
# Vision transformers: the ViT-style fields.
_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37,
        "image_size": IMAGE_SIZE, "patch_size": 8}
_SWIN = {"image_size": IMAGE_SIZE, "patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2],
         "window_size": 4}
_CONV = {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]}
_STAGES = {"out_features": None, "out_indices": None}
# Per model type: the config fields that make it tiny (or, for the vision-language families, its vision_config).
TINY_CONFIGS: dict[str, dict] = {
    "beit": _VIT,
    "bit": {**_CONV, "num_groups": 4, **_STAGES},
    "clip": {"vision_config": _VIT},
    "convnext": {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2, **_STAGES},
    "convnextv2": {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2, **_STAGES},
    "cvt": {"embed_dim": [8, 16], "num_heads": [1, 2], "depth": [1, 2], "patch_sizes": [7, 3], "patch_stride": [4, 2],
            "patch_padding": [2, 1], "mlp_ratio": [2.0, 2.0], "attention_drop_rate": [0.0, 0.0],
            "drop_rate": [0.0, 0.0], "drop_path_rate": [0.0, 0.0], "qkv_bias": [True, True],
            "cls_token": [False, True], "qkv_projection_method": ["dw_bn", "dw_bn"], "kernel_qkv": [3, 3],
            "padding_kv": [1, 1], "stride_kv": [2, 2], "padding_q": [1, 1], "stride_q": [1, 1]},
    "data2vec-vision": _VIT,
    "deit": {**_VIT, "encoder_stride": 8},
    "dinat": {"patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "kernel_size": 3,
              "dilations": [[1], [1]], **_STAGES},
    "dinov2": _VIT,
    "dinov2_with_registers": _VIT,
    "donut-swin": _SWIN,
    "efficientnet": {"image_size": IMAGE_SIZE, "hidden_dim": 320, "kernel_sizes": [3, 3], "in_channels": [8, 8],
                     "out_channels": [8, 16], "strides": [1, 2], "num_block_repeats": [1, 1], "expand_ratios": [1, 2],
                     "width_coefficient": 0.25, "depth_coefficient": 0.5},
    "focalnet": {"image_size": IMAGE_SIZE, "embed_dim": 8, "hidden_sizes": [16, 16], "depths": [1, 1],
                 "focal_levels": [1, 1], "focal_windows": [3, 3], **_STAGES},
    "hgnet_v2": {"embedding_size": 8, "depths": [1, 1], "hidden_sizes": [16, 32], "stem_channels": [3, 8, 8],
                 "stage_in_channels": [8, 16], "stage_mid_channels": [8, 8], "stage_out_channels": [16, 32],
                 "stage_num_blocks": [1, 1], "stage_downsample": [False, True], "stage_downsample_strides": [2, 2],
                 "stage_light_block": [False, True], "stage_kernel_size": [3, 3], "stage_numb_of_layers": [1, 1],
                 **_STAGES},
    "hiera": {"image_size": [IMAGE_SIZE, IMAGE_SIZE], "embed_dim": 8, "depths": [1, 1], "num_heads": [1, 1],
              "num_query_pool": 1, "masked_unit_size": [2, 2], "masked_unit_attention": [True, False],
              **_STAGES},
    "ijepa": _VIT,
    "levit": {"image_size": IMAGE_SIZE, "hidden_sizes": [16, 32], "num_attention_heads": [1, 2], "depths": [1, 1],
              "key_dim": [8, 8], "mlp_ratio": [2, 2], "attention_ratio": [2, 2],
              "down_ops": [["Subsample", 8, 1, 4, 2, 2]]},
    "metaclip_2": {"vision_config": _VIT},
    "mobilenet_v1": {"image_size": IMAGE_SIZE, "depth_multiplier": 0.25},
    "mobilenet_v2": {"image_size": IMAGE_SIZE, "depth_multiplier": 0.25},
    "mobilevit": {"image_size": IMAGE_SIZE, "hidden_sizes": [16, 16, 16], "neck_hidden_sizes": [8, 8, 8, 8, 8, 8, 16],
                  "num_attention_heads": 2},
    "mobilevitv2": {"image_size": IMAGE_SIZE, "width_multiplier": 0.25, "patch_size": 1, "n_attn_blocks": [1, 1, 1]},
    "perceiver": {"num_latents": 8, "d_latents": 16, "d_model": 32, "num_self_attends_per_block": 1,
                  "num_self_attention_heads": 1, "num_cross_attention_heads": 1, "image_size": IMAGE_SIZE},
    "poolformer": {"hidden_sizes": [8, 16], "depths": [1, 1], "patch_sizes": [7, 3], "strides": [4, 2],
                   "padding": [2, 1], "num_encoder_blocks": 2},
    "pp_lcnet": {"block_configs": [[[3, 8, 8, 1, False]], [[3, 8, 8, 2, False]], [[3, 8, 16, 2, False]],
                                   [[3, 16, 16, 2, False]], [[3, 16, 16, 2, True]]],
                 "stem_channels": 8, "class_expand": 32, **_STAGES},
    "pvt": {"image_size": IMAGE_SIZE, "num_encoder_blocks": 2, "depths": [1, 1], "sequence_reduction_ratios": [2, 1],
            "hidden_sizes": [8, 16], "patch_sizes": [4, 2], "strides": [4, 2], "num_attention_heads": [1, 2],
            "mlp_ratios": [2, 2]},
    "pvt_v2": {"image_size": [IMAGE_SIZE, IMAGE_SIZE], "num_encoder_blocks": 2, "depths": [1, 1], "sr_ratios": [2, 1],
               "hidden_sizes": [8, 16], "patch_sizes": [7, 3], "strides": [4, 2], "num_attention_heads": [1, 2],
               "mlp_ratios": [2, 2], **_STAGES},
    "regnet": {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "groups_width": 8},
    "resnet": {**_CONV, **_STAGES},
    "segformer": {"num_encoder_blocks": 2, "depths": [1, 1], "sr_ratios": [2, 1], "hidden_sizes": [8, 16],
                  "patch_sizes": [7, 3], "strides": [4, 2], "num_attention_heads": [1, 2], "mlp_ratios": [2, 2],
                  "decoder_hidden_size": 16},
    "siglip": {"vision_config": _VIT},
    "swiftformer": {"image_size": IMAGE_SIZE, "depths": [1, 1], "embed_dims": [8, 16], "downsamples": [True, True]},
    "swin": _SWIN,
    "swinv2": {**_SWIN, "pretrained_window_sizes": [0, 0]},
    "textnet": {"stem_out_channels": 8, "image_size": [IMAGE_SIZE, IMAGE_SIZE],
                "conv_layer_kernel_sizes": [[[3, 3]], [[3, 3]]], "conv_layer_strides": [[1], [2]],
                "hidden_sizes": [8, 8, 16], "depths": [1, 1], **_STAGES},
    "timm_wrapper": {"architecture": "test_resnet", "model_args": {"channels": (8, 16, 16, 16), "stem_width": 8},
                     "pretrained_cfg": {"input_size": (3, IMAGE_SIZE, IMAGE_SIZE), "mean": (0.5,) * 3,
                                        "std": (0.5,) * 3, "crop_pct": 1.0, "interpolation": "bilinear"}},
    "vit": _VIT,
    "vit_msn": _VIT,
}
# Families whose heads need their architecture's class, not the mapping's first (a distillation head beside the
# class head, averaged into the logits).
TEACHER_VARIANTS = {"deit": "DeiTForImageClassificationWithTeacher", "levit": "LevitForImageClassificationWithTeacher"}


def model_types() -> list[str]:
    """Every model type of the mapping, the supported ones first checked against `TINY_CONFIGS`."""
    return list(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)


def build_tiny(model_type: str, num_labels: int = 5, architecture: str | None = None) -> torch.nn.Module:
    """The tiny model of `model_type` with `num_labels` outputs (the architecture's class when given, e.g. DeiT's
    with-teacher variant), in eval mode."""
    fields = dict(TINY_CONFIGS[model_type])
    vision = fields.pop("vision_config", None)
    classes = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[model_type]
    first = classes[0] if isinstance(classes, tuple) else classes
    config = AutoConfig.for_model(model_type, num_labels=num_labels, architectures=[architecture or first], **fields)
    if vision is not None:
        for key, value in vision.items():
            setattr(config.vision_config, key, value)
    return AutoModelForImageClassification.from_config(config).eval()


__all__ = ["IMAGE_SIZE", "TEACHER_VARIANTS", "TINY_CONFIGS", "UNSUPPORTED_MODEL_TYPES", "build_tiny", "model_types"]
