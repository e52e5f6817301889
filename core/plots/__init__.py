"""Figures saved beside the tables (matplotlib, no display needed): one module per method, named as its flow,
and `style` for what they share."""
