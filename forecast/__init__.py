"""forecast: multimodal encoders and sub-quadratic sequence backbones for stock-return forecasting."""

__version__ = "0.1.0"
