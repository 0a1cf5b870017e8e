from django import forms

from demo.models import Order


class OrderForm(forms.Form):
    """A new order (no number), or a change to order ``number``: its status, and its title if given."""

    number = forms.IntegerField(required=False, min_value=1)
    title = forms.CharField(required=False, max_length=200, strip=True)
    status = forms.ChoiceField(choices=Order.Status.choices, initial=Order.Status.RECEIVED)

    def clean(self) -> dict:
        data = super().clean()
        if data.get("number") is None and not data.get("title"):
            raise forms.ValidationError("A new order needs a title.")
        return data
