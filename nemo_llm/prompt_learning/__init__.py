"""Prompt learning (P-tuning, prompt tuning) on a frozen GPT: virtual-token embeddings, task
templates, training through the pretraining stack, prompt files and inference with learned prompts."""

from nemo_llm.prompt_learning.embedding import PromptEncoder, PromptTable, VirtualPromptEmbedding
from nemo_llm.prompt_learning.prompts import (PromptFileError, attach_prompts, bake, read_prompt_file,
                                              save_prompt_file)
from nemo_llm.prompt_learning.templates import PromptTokenizer, TaskTemplate, TemplateError, VirtualTokens

__all__ = ["PromptEncoder", "PromptFileError", "PromptTable", "PromptTokenizer", "TaskTemplate", "TemplateError",
           "VirtualPromptEmbedding", "VirtualTokens", "attach_prompts", "bake", "read_prompt_file",
           "save_prompt_file"]
