"""Shared pytest settings."""


def pytest_configure(config):
    # torchvision 0.29 warns at every image decode that its decoders will move to TorchCodec; the warning is about
    # torchvision's future, not about m3reid, and would bury real warnings under hundreds of copies
    config.addinivalue_line('filterwarnings', 'ignore:The image decoding and encoding capabilities of TorchVision are '
                                              'deprecated:DeprecationWarning')
