"""Reuse an IQLearn reward for RLHF: TRL's GRPOTrainer with `tirl.rewards.RewardScorer` as its reward function.

    python examples/grpo_with_tirl_reward.py --reward_model runs/iqlearn-smollm2-135m-... --policy smollm2-135m
    python examples/grpo_with_tirl_reward.py --reward_model tiny-llama --policy tiny-llama --max_steps 2   # smoke test

The reward model is any checkpoint `tirl train` wrote (IQLearn rewards are the point; an MLE checkpoint works too but
its rewards are mostly a likelihood). The policy starts from `--policy`. Prompts come from a built-in task.
"""

import argparse

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from tirl import models
from tirl.data import load_rows, to_trl
from tirl.rewards import RewardScorer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reward_model", required=True, help="checkpoint whose implicit reward R = Σ r_t is maximised")
    p.add_argument("--policy", default="smollm2-135m", help="model to train with GRPO")
    p.add_argument("--dataset", default="arithmetic", help="task whose prompts are used")
    p.add_argument("--num_prompts", type=int, default=64, help="prompts in the training set")
    p.add_argument("--gamma", type=float, default=0.99, help="discount of the reward")
    p.add_argument("--max_steps", type=int, default=20, help="GRPO steps")
    p.add_argument("--output_dir", default="runs/grpo-tirl-reward", help="where GRPO writes")
    args = p.parse_args(argv)

    policy, tok = models.load(args.policy)
    rows = to_trl(load_rows(args.dataset, limit=args.num_prompts), tok)
    prompts = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    reward = RewardScorer(args.reward_model, gamma=args.gamma, normalize="mean")
    config = GRPOConfig(output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=4,
                        num_generations=4, max_completion_length=32, use_cpu=True, bf16=False, report_to="none",
                        logging_steps=1, learning_rate=1e-5, gradient_checkpointing=False)
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], args=config, train_dataset=prompts, processing_class=tok)
    trainer.train()
    print("mean reward per step:", [round(h["reward"], 4) for h in trainer.state.log_history if "reward" in h])


if __name__ == "__main__":
    main()
