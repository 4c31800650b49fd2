"""forecast: multimodal encoders and sub-quadratic sequence backbones for stock-return forecasting."""

from forecast.resources import register_resolvers

__version__ = "0.1.0"

register_resolvers()  # `${sample_store:}` resolves in every process that imports the package
