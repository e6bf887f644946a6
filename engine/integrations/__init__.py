"""Other tools' formats and runs: LLaMA-Factory YAML <-> plan (llamafactory), and memfit inside a training
run: the HF Trainer callback (transformers.MemfitCallback), the axolotl plugin (axolotl.MemfitPlugin) and
a LLaMA-Factory launcher with the callback (llamafactory_train)."""
