"""Layer 7: member kinds behind one registry (`registry`): TF-IDF linear models (`linear`),
fusion networks (comp.nn.trainer) and distilled students (`student`). A new member kind is a
class registered in `registry`.
"""
