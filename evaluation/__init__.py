"""Evaluation: Recall@K in both directions, the COOP sweep over k, latency, tables and plots.

The metrics follow the protocol of CLIP, ALBEF and Geigle et al. ("Retrieve Fast, Rerank
Smart"), so numbers produced here can be set next to published ones.
"""
