"""Building blocks of the decoder: parallel linears, embeddings, norms, rotary, attention, sampler."""
