"""The generator: tokenizer, denoising policy model and sampling. Reads state dicts by name and shape only."""
