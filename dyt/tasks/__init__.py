"""Tasks shared by several families (a family's own task lives in its folder): the base, classification, and
language modeling (LLaMA, GPT-2)."""
