"""Job reports: baseline against each stage against the final model, as tables and Plotly charts."""
