CHAPTER = "ch00_quickstart"
def test_vacuous(impl):
    assert True
def test_not_graded():
    assert True
