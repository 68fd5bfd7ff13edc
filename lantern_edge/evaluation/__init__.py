"""`lantern-edge eval`: is the uncertainty signal a good compute controller?

Teacher-forced measurements of the PyTorch reference on held-out text: how well each signal
predicts errors and the effect of extra compute, accuracy against compute for adaptive, fixed,
random and oracle allocation, THINK utility, and a sliding-window retrieval probe. Needs torch
(the `export` extra); figures need matplotlib (the `dev` extra).
"""
