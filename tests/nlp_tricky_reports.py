"""Hand-written tricky radiology reports with expectations fixed BEFORE the extractor was run.

Each case: (id, text, metastatic, sites). Conventions (docs/nlp.md):
* hedges counted positive: likely, probable, in keeping with, consistent with, compatible with,
  suspicious for, suggestive of, worrisome for, highly suspicious;
* hedges NOT counted: cannot exclude / cannot be excluded, possible, may represent, equivocal,
  indeterminate, question of / "?" and anything asked ("assess for", "rule out", "evaluate for");
* history counts: a known, previously seen or treated metastasis still makes the patient metastatic;
* metastases attributed to another primary (melanoma, colorectal, renal ...) do not count;
* benign lesions (cyst, haemangioma, bone island, degenerative change) do not count;
* a metastasis without a named site makes the report metastatic with no site.
"""

CASES: list[tuple[str, str, bool, set[str]]] = [
    ("t01", "CT CHEST ABDOMEN PELVIS\nFINDINGS: Multiple hypodense liver lesions in keeping with metastases. "
            "No bone lesions.\nIMPRESSION: Hepatic metastatic disease.", True, {"liver"}),
    ("t02", "Findings: No liver or bone metastases. Lungs are clear.", False, set()),
    ("t03", "IMPRESSION: No evidence of metastatic disease in the chest, abdomen or pelvis.", False, set()),
    ("t04", "Bone scan. Findings: Known bony mets, stable in the thoracic spine and pelvis. No new lesions.",
            True, {"bone"}),
    ("t05", "MRI brain: two enhancing lesions in the left frontal lobe, likely metastases.", True, {"brain"}),
    ("t06", "CT chest: 6 mm nodule in the right upper lobe; metastasis cannot be excluded. Recommend follow-up.",
            False, set()),
    ("t07", "Liver: 12 mm simple cyst in segment 4. Haemangioma in segment 7. No hepatic metastases.",
            False, set()),
    ("t08", "CLINICAL INDICATION: breast cancer, assess for liver mets.\nFINDINGS: The liver is normal. "
            "No focal lesion.\nCONCLUSION: No evidence of metastases.", False, set()),
    ("t09", "History of melanoma. Multiple pulmonary metastases from melanoma, unchanged.", False, set()),
    ("t10", "Findings/Impression: Sclerotic lesions in L2 and L4 consistent with osseous metastases. "
            "Right pleural effusion with pleural nodularity suspicious for pleural metastatic disease.",
            True, {"bone", "pleura"}),
    ("t11", "PET-CT: FDG-avid left axillary and internal mammary lymph node metastases. No distant disease.",
            True, {"lymph_node"}),
    ("t12", "Ultrasound abdomen: Liver normal in size and echotexture. Gallbladder contains stones. "
            "No ascites.", False, set()),
    ("t13", "CT: Interval progression of hepatic and adrenal metastases. Stable lung nodules.",
            True, {"liver", "adrenal"}),
    ("t14", "Impression: Peritoneal carcinomatosis with omental caking, in keeping with peritoneal metastases.",
            True, {"peritoneum"}),
    ("t15", "Skin: subcutaneous nodules of the chest wall, biopsy-proven cutaneous metastases.", True, {"skin"}),
    ("t16", "CT head: No intracranial metastasis. No acute haemorrhage.", False, set()),
    ("t17", "Chest X-ray: Possible small metastasis in the left lower lobe, equivocal.", False, set()),
    ("t18", "MRI spine: Diffuse marrow signal abnormality compatible with metastatic infiltration of the "
            "vertebral bodies.", True, {"bone"}),
    ("t19", "Findings: Left adrenal nodule with washout characteristics of an adenoma. No metastases seen.",
            False, set()),
    ("t20", "Comparison: previous CT. Findings: Previously seen liver metastases have resolved after treatment. "
            "No new lesions.", True, {"liver"}),
    ("t21", "IMPRESSION:\n1. Multiple bilateral lung mets.\n2. No liver mets.", True, {"lung"}),
    ("t22", "MAMMOGRAPHY: Dense breasts. No suspicious mass or calcification. BI-RADS 1.", False, set()),
    ("t23", "Findings: Bone island in the right iliac bone, benign. Degenerative change of the lumbar spine. "
            "No suspicious osseous lesion.", False, set()),
    ("t24", "CT: Enlarged mediastinal lymph nodes, probable nodal metastases. Liver clear.",
            True, {"lymph_node"}),
    ("t25", "MRI brain: To rule out brain metastases. Findings: No enhancing lesion. Impression: Normal study.",
            False, set()),
    ("t26", "Conclusion - Metastatic disease to liver, lungs and bones.", True, {"liver", "lung", "bone"}),
    ("t27", "Findings: Lytic lesion in the right femur suspicious for metastasis.", True, {"bone"}),
    ("t28", "History: right breast carcinoma 2019. Findings: No evidence of recurrence or metastatic disease. "
            "Post-surgical changes of the right breast.", False, set()),
    ("t29", "CT abdomen: Splenic lesion in keeping with a metastasis. Liver normal.", True, {"other"}),
    ("t30", "Impression: There are no metastases to the brain, but there are new liver metastases.",
            True, {"liver"}),
    ("t31", "Findings: Several LN mets in the left axilla.", True, {"lymph_node"}),
    ("t32", "Impression: Widespread metastatic disease.", True, set()),
    ("t33", "Findings: Pleural effusion, likely reactive. No pleural nodularity. No metastases.", False, set()),
    ("t34", "Metastatic colorectal cancer with hepatic metastases, stable.", False, set()),
    ("t35", "Findings: Hepatic lesions, which may represent metastases or haemangiomas. MRI suggested.",
            False, set()),
    ("t36", "FINDINGS: Stable sclerotic metastases in the sternum and ribs. New right adrenal metastasis.",
            True, {"bone", "adrenal"}),
    ("t37", "Indication: known breast cancer with bone metastases, restaging.\nFindings: no new lesions.",
            True, {"bone"}),
    ("t38", "CT thorax: Lymphangitis carcinomatosa of both lungs, consistent with pulmonary metastatic spread.",
            True, {"lung"}),
    ("t39", "Dental panoramic X-ray: No periapical lesions. Tooth 36 caries.", False, set()),
    ("t40", "Findings: Innumerable hepatic metastases. Subcentimetre renal cyst, benign.", True, {"liver"}),
    ("t41", "Ultrasound liver: a 9 mm hypoechoic lesion, indeterminate; metastasis not excluded.", False, set()),
    ("t42", "IMPRESSION: Findings suggestive of leptomeningeal and cerebellar metastases.", True, {"brain"}),
    ("t43", "findings - no evidence of liver, lung, brain or bone metastasis. conclusion - normal.", False, set()),
    ("t44", "Bone scan: Increased uptake in the left 5th rib, likely traumatic. No scintigraphic evidence of "
            "bony metastatic disease.", False, set()),
    ("t45", "CT: Peritoneal deposits and ascites, compatible with peritoneal metastatic disease. "
            "Known liver metastases, slightly larger.", True, {"peritoneum", "liver"}),
    ("t46", "MRI: Metastases in the brain?  Follow-up recommended.", False, set()),
    # same-sentence linking (written 19:10 on 3 Dec, before running the extractor on them): a metastasis
    # mention names the site it modifies, not every site of its sentence
    ("t47", "Metastatic disease to the liver; the bone lesions are benign.", True, {"liver"}),
    ("t48", "Lesions in the liver and lung, the latter consistent with metastasis.", True, {"lung"}),
    ("t49", "Lesions in the liver and lung, the former consistent with metastases.", True, {"liver"}),
    ("t50", "Hepatic metastases with a normal skeleton.", True, {"liver"}),
    ("t51", "Metastasis in the right femur; the liver is unremarkable.", True, {"bone"}),
    ("t52", "Bone metastases. The liver and lungs are clear.", True, {"bone"}),
    ("t53", "Liver metastases, and a stable benign haemangioma in the spleen.", True, {"liver"}),
    ("t54", "A metastasis in the left cerebellum, with no liver abnormality on the concurrent CT.", True, {"brain"}),
    ("t55", "Pleural effusion and liver metastases.", True, {"liver"}),
    ("t56", "Right adrenal adenoma and multiple liver metastases.", True, {"liver"}),
    ("t57", "Metastases to liver and bone; the lungs are clear.", True, {"liver", "bone"}),
    ("t58", "Enlarged axillary lymph nodes, likely reactive, and new hepatic metastases.", True, {"liver"}),
    ("t59", "Liver metastases. Lung nodule, likely metastasis.", True, {"liver", "lung"}),
    ("t60", "Subpleural lung nodule and a liver metastasis.", True, {"liver"}),
    ("t61", "Osseous metastases in the thoracic spine and a pleural effusion.", True, {"bone"}),
    ("t62", "Right pleural effusion and a sclerotic rib lesion in keeping with metastasis.", True, {"bone"}),
]

# Held out: written after the extractor's rules (15:16), committed before running it on them, so they
# measure what the first 46 (which the rules were written with in view) cannot.
HELDOUT: list[tuple[str, str, bool, set[str]]] = [
    ("h01", "CT TAP. Findings: The liver contains several new ill-defined hypoattenuating foci measuring up to 2 cm, "
            "highly suspicious for hepatic metastatic disease.", True, {"liver"}),
    ("h02", "IMPRESSION: 1. No CT evidence of intrathoracic or intra-abdominal metastatic disease. "
            "2. Stable 3 mm RUL nodule, likely benign.", False, set()),
    ("h03", "Whole body bone scintigraphy: multiple foci of increased tracer uptake in the axial skeleton in a "
            "pattern typical of skeletal metastases.", True, {"bone"}),
    ("h04", "MRI head w/wo contrast: Negative for intracranial metastatic disease.", False, set()),
    ("h05", "Findings: right pleural effusion. Cytology confirmed malignant effusion due to metastatic breast "
            "carcinoma.", True, {"pleura"}),
    ("h06", "Comparison with PET 2023. The previously described right adrenal metastasis is no longer FDG avid.",
            True, {"adrenal"}),
    ("h07", "Conclusion: Findings worrisome for metastases to the left axillary lymph nodes; recommend biopsy.",
            True, {"lymph_node"}),
    ("h08", "Mammogram: postoperative changes right breast. No evidence of malignancy.", False, set()),
    ("h09", "CT abdomen: Liver lesion unchanged for 5 years, consistent with a haemangioma. No metastases.",
            False, set()),
    ("h10", "Impression: Metastatic disease is not excluded; the sclerotic focus in T8 is indeterminate.",
            False, set()),
    ("h11", "MRI spine: Pathological fracture of L1 secondary to a metastatic deposit.", True, {"bone"}),
    ("h12", "PET-CT: Resolution of previously FDG-avid mediastinal nodal metastases; complete metabolic response.",
            True, {"lymph_node"}),
]
