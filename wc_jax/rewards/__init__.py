"""Rewards, advantages and the NFT loss as JAX callables.

Every reward scores ONE candidate, is jit-compiled, and is vmappable over a
candidate axis (and shardable over the mesh's data axes: see
`wc_jax.rewards.batch.score_candidates`). Shapes are checked at trace time.
See docs/rewards.md.
"""
from wc_jax.rewards._model import BoundModel, bind_model, call_with_model
from wc_jax.rewards.accuracy import (ActionAccuracy, action_accuracy, compared_frames,
                                     latent_to_frame_labels)
from wc_jax.rewards.advantages import (GroupAdvantage, GrpoInputs, best_of_n_mask,
                                       combine_advantages, group_advantages, prepare_grpo)
from wc_jax.rewards.batch import candidate_sharding, score_candidates
from wc_jax.rewards.idm import idm_reward
from wc_jax.rewards.interaction import interaction_reward, interaction_scores
from wc_jax.rewards.labels import (GT_THRESHOLDS, NUM_ACTIONS, REWARD_MOVE_THRESHOLDS,
                                   REWARD_ROT_THRESHOLD_DEG, ROT_NAMES, TRANS_NAMES, Thresholds,
                                   action_labels, gt_action_labels, merge_action,
                                   relative_motion, reward_action_labels, split_action,
                                   step_labels)
from wc_jax.rewards.nft import (NftLoss, nft_advantage, nft_loss, nft_sigma_schedule,
                                noisy_latents, sample_train_sigmas)
from wc_jax.rewards.quality import (QUALITY_PROMPT, quality_drift_reward, quality_reward,
                                    scored_frame_indices)
from wc_jax.rewards.registry import REWARDS, RewardSpec, default_weights, get_reward
from wc_jax.rewards.similarity import embedding_similarity_reward

__all__ = [
    "BoundModel", "bind_model", "call_with_model", "ActionAccuracy", "action_accuracy", "compared_frames",
    "latent_to_frame_labels", "GroupAdvantage", "GrpoInputs", "best_of_n_mask",
    "combine_advantages", "group_advantages", "prepare_grpo", "candidate_sharding",
    "score_candidates", "idm_reward", "interaction_reward", "interaction_scores", "GT_THRESHOLDS",
    "NUM_ACTIONS", "REWARD_MOVE_THRESHOLDS", "REWARD_ROT_THRESHOLD_DEG", "ROT_NAMES",
    "TRANS_NAMES", "Thresholds", "action_labels", "gt_action_labels", "merge_action",
    "relative_motion", "reward_action_labels", "split_action", "step_labels", "NftLoss",
    "nft_advantage", "nft_loss", "nft_sigma_schedule", "noisy_latents", "sample_train_sigmas",
    "QUALITY_PROMPT", "quality_drift_reward", "quality_reward", "scored_frame_indices", "REWARDS",
    "RewardSpec", "default_weights", "get_reward", "embedding_similarity_reward",
]
