"""lmsprint.export: models out of lmsprint. Hugging Face folders (hf.py, hf_tokenizer.py) and safetensors weights
(safetensors_io.py).

Entry points: `export_hf(model_cfg, state_dict, tokenizer_info, out_dir)`, `hf_architecture(model_cfg)` (the
refusal check, usable before any work), `save_weights` / `load_weights` / `model_config_of`,
`describe_tokenizer(tokenizer)` (what a run directory must keep to rebuild the tokenizer offline).
"""

from .hf import export_hf, hf_architecture
from .hf_tokenizer import describe_tokenizer
from .safetensors_io import WEIGHTS_FILE, load_weights, model_config_of, save_weights

__all__ = ["export_hf", "hf_architecture", "describe_tokenizer", "save_weights", "load_weights", "model_config_of",
           "WEIGHTS_FILE"]
