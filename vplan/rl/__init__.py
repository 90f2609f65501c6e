"""RL finetuning of planner and executor (`vplan rl`): hierarchical exploration, rewards, offline RL objectives."""
