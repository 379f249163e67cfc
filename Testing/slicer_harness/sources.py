"""Where each stand-in widget's properties, methods and signals are declared in CTK or Slicer
(checked by check_sources.py; kept free of Qt so the check needs none)."""

# property, method or signal → (header, as declared there)
SOURCES = {
    "ctkCollapsibleButton": ("Libs/Widgets/ctkCollapsibleButton.h",
                             ["Q_PROPERTY(bool collapsed", "setCollapsed("]),
    "ctkPathLineEdit": ("Libs/Widgets/ctkPathLineEdit.h",
                        ["Q_PROPERTY(QString currentPath", "Q_PROPERTY(Filters filters", "currentPathChanged(",
                         "setCurrentPath(", "Dirs"]),
    "qMRMLWidget": ("Libs/MRML/Widgets/qMRMLWidget.h", ["setMRMLScene(", "mrmlSceneChanged("]),
    "qMRMLNodeComboBox": ("Libs/MRML/Widgets/qMRMLNodeComboBox.h",
                          ["Q_PROPERTY(QStringList nodeTypes", "Q_PROPERTY(bool showHidden",
                           "Q_PROPERTY(bool showChildNodeTypes", "Q_PROPERTY(QStringList hideChildNodeTypes",
                           "Q_PROPERTY(bool noneEnabled", "Q_PROPERTY(bool addEnabled",
                           "Q_PROPERTY(bool removeEnabled", "Q_PROPERTY(bool editEnabled",
                           "Q_PROPERTY(bool renameEnabled", "currentNode()", "setCurrentNode(vtkMRMLNode* node)",
                           "setCurrentNodeID(", "nodeCount()", "nodeFromIndex(", "setMRMLScene(",
                           "mrmlScene()", "currentNodeChanged(vtkMRMLNode* node)", "currentNodeID"]),
    "qMRMLCheckableNodeComboBox": ("Libs/MRML/Widgets/qMRMLCheckableNodeComboBox.h",
                                   ["checkedNodes()", "setCheckState(", "checkState(", "checkedNodesChanged()"]),
}
