"""The CostReport CRD and the meter's model of it describe the same fields (as test_crds does for
the operator's resources): a field in one only would be accepted by the API server and ignored by
the scheduler, or the other way round."""

from __future__ import annotations

from test_crds import compare, crd

from tollway_meter.costreport import CostReportSpec


def test_the_costreport_crd_and_the_meters_model_have_the_same_fields() -> None:
    (version,) = crd("CostReport")["spec"]["versions"]
    assert compare(CostReportSpec, version["schema"]["openAPIV3Schema"]["properties"]["spec"], "spec") == []


def test_the_costreport_printer_columns() -> None:
    (version,) = crd("CostReport")["spec"]["versions"]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names == ["Period", "Schedule", "Last Sent", "Next Due", "Result", "Age"]
