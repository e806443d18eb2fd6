"""Reports people read: Markdown tables, the paper's table layout beside ours, and figures."""
