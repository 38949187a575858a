"""LingBot-World generator (Wan2.2 i2v DiT + camera branch, two experts) and its camera input."""
from wc_jax.models.lingbot.config import LingBotConfig
from wc_jax.models.lingbot.dit import LingBotDiT, abstract_model, build, functional
