"""Data: Fashion-MNIST, image folders, photo decoding and conversion, augmentation, corruptions."""
