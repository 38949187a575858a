"""A small, complete WorldCompass reproduction in the synthetic world (issue 6, parts 4-6).

latent      fixed, exactly invertible pixel <-> latent map (no VAE)
data        commanded trajectories and ground-truth clips of the synthetic world
base_train  the tiny WorldPlay DiT trained with the reference's base objective
reward      IDM training and the reward stage the RL trainer calls
evaluate    batched AR rollouts, action accuracy by an independent IDM, quality
judge       render-and-compare judge (no learned weights), PSNR / SSIM
stats       paired bootstrap CIs, best-of-G headroom numbers
"""
