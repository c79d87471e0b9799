"""fashionclf: train, compare and serve product-photo classifiers, starting from Fashion-MNIST."""

__version__ = "0.1.0"
