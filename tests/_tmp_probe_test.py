import pytest
@pytest.mark.parametrize("n", range(10))
def test_probe(database_url, n):
    pass
