"""The top of a case page: the model card and the prediction's confidence (not a page itself).

Logic lives in :mod:`medcl.review.model_card` and :mod:`medcl.review.confidence`; this draws it.
"""

from __future__ import annotations

import streamlit as st

from medcl.review import confidence, model_card
from medcl.review.safe_text import plain
from medcl.review.service import CaseDetail


def render_model_card(detail: CaseDetail) -> None:
    """The research notice (when the pipeline marks the model so) and the model's card."""
    card = model_card.card_of(detail.artifacts)
    if card is None:
        st.info(model_card.NO_CARD, icon=":material/help:")
        return
    if card.research_only:
        st.warning(f"**{model_card.RESEARCH_NOTICE}**", icon=":material/science:")
    with st.container(border=True):
        st.markdown(f"**Model:** {plain(card.display_name)}")
        st.markdown(f"**Trained on:** {plain(card.trained_on)}")
        st.markdown(f"**Intended use:** {plain(card.intended_use)}")
        st.caption(
            f"Pipeline name: {plain(detail.summary.model)} {plain(detail.summary.model_version)}"
        )


def render_confidence(detail: CaseDetail) -> None:
    """Predicted label with its probability, uncertainty (defined), and every class's score."""
    summary = detail.summary
    card = model_card.card_of(detail.artifacts)
    defined = plain(confidence.uncertainty_definition(card))
    labels = detail.artifacts.get("labels")
    structures = confidence.structure_rows(
        summary.label, detail.scores, labels if isinstance(labels, dict) else None
    )
    metrics = st.columns(4)
    if summary.kind == "volume":
        metrics[0].metric("Predicted structures", len(structures), help="Listed below in full.")
    else:
        metrics[0].metric("Predicted label", plain(summary.label))
    prob = confidence.predicted_probability(detail.scores, summary.label)
    metrics[1].metric(
        "Probability",
        "—" if prob is None else f"{prob:.2f}",
        help="The model's score for the predicted label (volumes: per structure, below).",
    )
    metrics[2].metric("Uncertainty", f"{summary.uncertainty:.2f}", help=defined)
    metrics[3].metric("Reviews", summary.n_reviews)
    st.caption(defined)
    if summary.kind == "volume":
        st.markdown(f"**Predicted structures ({len(structures)})**")
        st.dataframe(
            structures,
            hide_index=True,
            column_config={
                "structure": st.column_config.TextColumn("structure", width="medium"),
                "class": st.column_config.NumberColumn("class", format="%d"),
                "confidence": st.column_config.ProgressColumn(
                    "mean confidence",
                    help="Mean softmax probability over the voxels predicted as the structure.",
                    min_value=0.0,
                    max_value=1.0,
                    format="%.2f",
                ),
            },
            key=f"case_structures_{summary.id}",
        )
        return
    rows = confidence.score_rows(detail.scores, summary.label)
    if not rows:
        st.caption("The pipeline gave no class probabilities.")
        return
    st.markdown("**Class probabilities**")
    st.vega_lite_chart(
        [{**r, "predicted": "predicted" if r["predicted"] else "other"} for r in rows],
        {
            "mark": {"type": "bar"},
            "height": {"step": 28},
            "encoding": {
                "y": {"field": "class", "type": "nominal", "sort": "-x", "title": None},
                "x": {
                    "field": "probability",
                    "type": "quantitative",
                    "scale": {"domain": [0, 1]},
                    "axis": {"format": ".1f", "tickCount": 5},
                },
                "color": {
                    "field": "predicted",
                    "type": "nominal",
                    "scale": {"domain": ["predicted", "other"], "range": ["#1f77b4", "#9ecae1"]},
                    "legend": None,
                },
                "tooltip": [
                    {"field": "class", "type": "nominal"},
                    {"field": "probability", "type": "quantitative", "format": ".3f"},
                ],
            },
        },
        width="stretch",
    )
    st.caption(
        " · ".join(
            f"{plain(r['class'])} {r['probability']:.2f}"
            + (" (predicted)" if r["predicted"] else "")
            for r in rows
        )
    )
