"""Run directories, below every layer that reads one: Orbax checkpoints (:mod:`.checkpoint`) and the
reader of a finished run's config, tokenizer and newest policy (:mod:`.artifacts`). The training
loops write run directories; rewards (a reward-model run as a reward, an LLM judge) and the CLI
read them; neither depends on the other."""
