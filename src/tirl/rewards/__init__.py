"""Rewards read off a trained model (docs/method.md §4): extraction, pictures and analysis.

    extraction   r_t = Q(s_t, a_t) − γ·V(s_{t+1}) per token and R = Σ r_t of any causal LM checkpoint, in the value
                 form and γ it was trained with (`RewardModel`; `ScoreSettings`: how it is computed); `RewardScorer`,
                 a reward function for TRL's online trainers
    pictures     completions coloured by r_t (HTML, PNG), reward histograms and scatter plots
    analysis     rank correlations with task scores, preference accuracy, demonstration pairs, the analysis table

The `tirl rewards analyse` job that samples, scores and writes files is `tirl.jobs.analyse`.
"""

from .analysis import (
    analysis_markdown,
    correlations,
    demonstration_pairs,
    pairwise_accuracy,
    pearson,
    preference_accuracy,
    spearman,
    within_prompt_spearman,
)
from .extraction import (
    RewardModel,
    RewardScorer,
    ScoreSettings,
    SequenceRewards,
    encode_generated,
    load_reward_model,
    score,
    score_encoded,
    training_run,
)
from .pictures import render_html, render_png, reward_histogram, reward_scatter

__all__ = ["RewardModel", "RewardScorer", "ScoreSettings", "SequenceRewards", "analysis_markdown", "correlations", "demonstration_pairs",
           "encode_generated", "load_reward_model", "pairwise_accuracy", "pearson", "preference_accuracy",
           "render_html", "render_png", "reward_histogram", "reward_scatter", "score", "score_encoded", "spearman",
           "training_run", "within_prompt_spearman"]
