"""Infotexts quoted in the spec, shared by the parser and the `infotext` request-field tests."""

# As A1111 modules/processing.py: create_infotext writes it, through the API: hires, clip skip, variation
# seed, external VAE.
EXAMPLE_2 = (
    "1girl, <lora:add_detail:0.8>\n"
    "Negative prompt: easynegative\n"
    "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1000, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, "
    "VAE: vae-ft-mse-840000-ema-pruned.safetensors, Variation seed: 2000, Variation seed strength: 0.3, "
    "Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2.0, Hires steps: 10, Hires upscaler: R-ESRGAN 4x+, "
    'Lora hashes: "add_detail: 7c6bad76eb54", TI hashes: "easynegative: c74b4e810b03", Version: v1.10.1'
)
