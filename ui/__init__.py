"""The Streamlit app: results before and after reranking, side by side."""
